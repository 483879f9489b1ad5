
set terminal pngcairo size 1000,560 noenhanced font 'sans,10'
set datafile missing '-'
set output 'docs/img/throughput.png'
set title 'No-op tasks/s by executor kind: cfutures, Python concurrent.futures, raw ZeroMQ relay (5 interleaved round(s), medians)'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set yrange [1000:*]
set ylabel 'tasks/s (log scale)'
set grid ytics
set key top left
set bmargin 4
plot 'docs/img/data/throughput.dat' using 2:xtic(1) title 'cfutures', '' using 3 title 'Python concurrent.futures', \
     '' using 4 title 'raw relay, one task per message', '' using 5 title 'raw relay, batching'
unset logscale y
set yrange [*:*]
set style data linespoints
set output 'docs/img/payload.png'
set title 'Payload throughput, arguments echoed back as results (5 interleaved round(s), medians)'
set xlabel 'argument size, KiB (log scale)'
set ylabel 'MiB/s of arguments (results carry as many back)'
set logscale x 2
set xtics ('1 KiB' 1, '64 KiB' 64, '1 MiB' 1024)
set bmargin
set yrange [0:*]
set key bottom right
plot 'docs/img/data/payload.dat' using 1:2:3:4 with yerrorlines lw 2 title 'cfutures remote (min-max)', \
     '' using 1:5 with linespoints lw 2 title 'raw relay, one task per message', \
     '' using 1:6 with linespoints lw 2 title 'raw relay, batching'
unset logscale x
set xtics autofreq
set xlabel
set style data lines

set output 'docs/img/latency-threads.png'
set title 'Round trip of one task at a time, threads (last round, CDF)'
set xlabel 'round trip, µs (log scale)'
set ylabel 'fraction of round trips'
set logscale x
set yrange [0:1]
set key bottom right
set grid
plot 'build-release/s7/bench-samples/threads.latency.txt' using 1:($0+1)/2000 with lines lw 2 dt 1 title 'cfutures CF_THREADS', 'build-release/s7/bench-samples/threads.latency_nospin.txt' using 1:($0+1)/2000 with lines lw 2 dt 1 title 'cfutures, waiter spin off', 'build-release/s7/bench-samples/python.threads.latency.txt' using 1:($0+1)/2000 with lines lw 2 dt 2 title 'ThreadPoolExecutor'
unset logscale x

set output 'docs/img/latency-processes.png'
set title 'Round trip of one task at a time, processes (last round, CDF)'
set xlabel 'round trip, µs (log scale)'
set ylabel 'fraction of round trips'
set logscale x
set yrange [0:1]
set key bottom right
set grid
plot 'build-release/s7/bench-samples/processes.latency.txt' using 1:($0+1)/2000 with lines lw 2 dt 1 title 'cfutures CF_PROCESSES', 'build-release/s7/bench-samples/processes.latency_nospin.txt' using 1:($0+1)/2000 with lines lw 2 dt 1 title 'cfutures, waiter spin off', 'build-release/s7/bench-samples/python.processes.latency.txt' using 1:($0+1)/2000 with lines lw 2 dt 2 title 'ProcessPoolExecutor'
unset logscale x

set output 'docs/img/latency-remote.png'
set title 'Round trip of one task at a time, remote (last round, CDF)'
set xlabel 'round trip, µs (log scale)'
set ylabel 'fraction of round trips'
set logscale x
set yrange [0:1]
set key bottom right
set grid
plot 'build-release/s7/bench-samples/remote.latency.txt' using 1:($0+1)/2000 with lines lw 2 dt 1 title 'cfutures remote', 'build-release/s7/bench-samples/remote.latency_nospin.txt' using 1:($0+1)/2000 with lines lw 2 dt 1 title 'cfutures remote, waiter spin off', 'build-release/s7/bench-samples/relay.drain.w1.latency.txt' using 1:($0+1)/2000 with lines lw 2 dt 2 title 'raw relay (drain, 1 worker)', 'build-release/s7/bench-samples/relay.drain.w1.latency_spin.txt' using 1:($0+1)/2000 with lines lw 2 dt 2 title 'raw relay, its client spinning', 'build-release/s7/bench-samples/remote.load.txt' using 1:($0+1)/2000 with lines lw 2 dt 1 title 'cfutures remote, under load', 'build-release/s7/bench-samples/remote.load_1ms.txt' using 1:($0+1)/500 with lines lw 2 dt 1 title 'cfutures remote, beside 100 tasks of 1 ms', 'build-release/s7/bench-samples/relay.load.txt' using 1:($0+1)/2000 with lines lw 2 dt 2 title 'raw relay (drain w1), under load'
unset logscale x

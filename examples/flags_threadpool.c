//  SPDX-License-Identifier: MIT
//
//  flags_threadpool: the classic flags download on a thread pool:
//
//      def download_many(cc_list):
//          with ThreadPoolExecutor() as executor:
//              to_do = [executor.submit(download_one, cc) for cc in sorted(cc_list)]
//              for future in as_completed(to_do):
//                  ...
//
//  Twenty threads wait on the network at once: about one server delay in
//  all instead of twenty. Codes print in the order they complete.
//
//  Usage: flags_threadpool [-u URL] [-o DIR] [threads | processes | remote [ENDPOINT]]

#include "flags.h"

int main(int argc, char **argv)
{
    return flags_pool_main(argc, argv, CF_THREADS);
}

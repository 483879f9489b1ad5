//  SPDX-License-Identifier: MIT
//
//  flags_processpool: the classic flags download on worker processes, or on
//  a cluster with `remote [ENDPOINT]` (workers loaded with
//  libdownload_tasks.so). The code is flags_threadpool's with another
//  executor kind: the task is found by name, its result travels as bytes.
//
//  For I/O-bound work processes buy nothing over threads in C (no GIL to
//  escape; one worker per core waits on one request at a time), which is
//  why this version takes longer than flags_threadpool with the default
//  pool: README.md, "Threads or processes?". On a cluster, the workers'
//  threads do the waiting.
//
//  Usage: flags_processpool [-u URL] [-o DIR] [threads | processes | remote [ENDPOINT]]

#include "flags.h"

int main(int argc, char **argv)
{
    return flags_pool_main(argc, argv, CF_PROCESSES);
}

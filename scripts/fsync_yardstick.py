#!/usr/bin/env python3
"""What a disk flush costs on the disk of DIR, the yardstick for litefs's
one fsync per rollback-journal commit (its LTX file) beside SQLite's
three: 4 KiB written to each of two files, then one fsync, two fsyncs in
sequence, and two from two threads at once. Medians of --times tries.
When two at once cost as much as two in sequence, the disk serializes
flushes and overlapping litefs's fsync with SQLite's gains nothing.

    fsync_yardstick.py DIR [--times N]
"""

import argparse
import os
import statistics
import threading
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--times", type=int, default=300)
    args = parser.parse_args()
    paths = [os.path.join(args.dir, f"fsync-yardstick-{i}") for i in (0, 1)]
    fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o600) for p in paths]
    try:
        def dirty(i):
            for fd in fds:
                os.pwrite(fd, os.urandom(4096), (i % 16) * 4096)

        def timed(flush):
            times = []
            for i in range(args.times):
                dirty(i)
                start = time.perf_counter()
                flush()
                times.append(time.perf_counter() - start)
            return statistics.median(times) * 1e3

        def both_at_once():
            other = threading.Thread(target=os.fsync, args=(fds[1],))
            other.start()
            os.fsync(fds[0])
            other.join()

        one = timed(lambda: os.fsync(fds[0]))
        sequence = timed(lambda: (os.fsync(fds[0]), os.fsync(fds[1])))
        at_once = timed(both_at_once)
        print(f"fsync of 4 KiB on this disk: one {one:.3f} ms, two in sequence "
              f"{sequence:.3f} ms, two at once {at_once:.3f} ms (median of {args.times})")
    finally:
        for fd, path in zip(fds, paths):
            os.close(fd)
            os.remove(path)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Reference of the block digest of ploop-image(5), CONTENT DIGESTS,
written from the specification alone, to check ploopctl checksum:

    H( H(block 0) || ... || H(block N-1) || le64(length) )

over blocks of 64 KiB, the last one as long as what is left.
usage: blkhash_ref.py [-a ALGORITHM] FILE   (prints "<hex>  FILE")
"""
import hashlib
import struct
import sys

BLOCK = 64 * 1024


def blkhash(path, alg="sha256"):
    outer = hashlib.new(alg)
    length = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(BLOCK)
            if not b:
                break
            outer.update(hashlib.new(alg, b).digest())
            length += len(b)
    outer.update(struct.pack("<Q", length))
    return outer.hexdigest()


def main():
    args = sys.argv[1:]
    alg = "sha256"
    if len(args) == 3 and args[0] == "-a":
        alg = args[1]
        args = args[2:]
    if len(args) != 1:
        sys.exit(__doc__.strip().splitlines()[-1])
    print(f"{blkhash(args[0], alg)}  {args[0]}")


if __name__ == "__main__":
    main()

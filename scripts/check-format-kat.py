#!/usr/bin/env python3
"""Hand-check of the format known-answer files against docs/formats.md and docs/trace-format.md.

An oracle independent of baton's C++: it reads a snapshot (.snap) or trace (.trace) file by
the byte tables of the docs, verifies every checksum with its own XXH64 (below, from the
xxHash specification), decompresses each zstd frame with the `zstd` command, and prints every
field. Usage: scripts/check-format-kat.py FILE...   (exit 1 on the first violation)
"""
import json
import struct
import subprocess
import sys

M = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M


def xxh64(data, seed=0):
    """XXH64 as the xxHash specification (doc/xxhash_spec.md) defines it."""
    def rnd(acc, lane):
        acc = (acc + lane * P2) & M
        return (rotl(acc, 31) * P1) & M

    def merge(acc, v):
        acc ^= rnd(0, v)
        return (acc * P1 + P4) & M

    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M, (seed + P2) & M, seed, (seed - P1) & M]
        while i + 32 <= n:
            for k in range(4):
                v[k] = rnd(v[k], struct.unpack_from('<Q', data, i + 8 * k)[0])
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M
        for k in range(4):
            h = merge(h, v[k])
    else:
        h = (seed + P5) & M
    h = (h + n) & M
    while i + 8 <= n:
        h ^= rnd(0, struct.unpack_from('<Q', data, i)[0])
        h = (rotl(h, 27) * P1 + P4) & M
        i += 8
    if i + 4 <= n:
        h ^= (struct.unpack_from('<I', data, i)[0] * P1) & M
        h = (rotl(h, 23) * P2 + P3) & M
        i += 4
    while i < n:
        h ^= (data[i] * P5) & M
        h = (rotl(h, 11) * P1) & M
        i += 1
    h ^= h >> 33
    h = (h * P2) & M
    h ^= h >> 29
    h = (h * P3) & M
    h ^= h >> 32
    return h


def need(cond, what):
    if not cond:
        sys.exit('check-format-kat: ' + what)


def unzstd(frame):
    need(frame[:4] == b'\x28\xb5\x2f\xfd', 'not a zstd frame (magic 0xFD2FB528, RFC 8878)')
    return subprocess.run(['zstd', '-d', '-c', '-q'], input=frame, stdout=subprocess.PIPE, check=True).stdout


def snapshot(b):
    magic, version, hsize, json_len, page_count, pages_len, checksum = struct.unpack_from('<8sIIQQQQ', b, 0)
    print(f'magic {magic!r} version {version} header_size {hsize}')
    print(f'json_len {json_len} page_count {page_count} pages_len {pages_len} checksum {checksum:#018x}')
    need(magic == b'BATONSNP' and version == 1 and hsize == 48, 'bad magic, version or header size')
    need(len(b) == 48 + json_len + pages_len, 'the file does not end right after the page block')
    need(xxh64(b[48:]) == checksum, f'checksum: computed {xxh64(b[48:]):#018x}')
    body = json.loads(b[48:48 + json_len].decode())
    print('json', json.dumps(body, sort_keys=True))
    pages = unzstd(b[48 + json_len:])
    need(len(pages) == page_count * 4096, 'page block size')
    need(len(body['table_frames']) == page_count, 'table_frames count')
    for i, frame in enumerate(body['table_frames']):
        for k in range(512):
            e = struct.unpack_from('<Q', pages, i * 4096 + 8 * k)[0]
            if e:
                print(f'page {i} (frame {frame}) entry {k}: {e:#018x}')


def trace(b):
    magic, version, flags, json_len, hsum = struct.unpack_from('<8sIIQQ', b, 0)
    print(f'magic {magic!r} version {version} flags {flags} json_len {json_len} checksum {hsum:#018x}')
    need(magic == b'BATONTRC' and version == 1 and flags == 0, 'bad prelude')
    need(xxh64(b[8:24] + b[32:32 + json_len]) == hsum, 'header checksum')
    print('header', json.dumps(json.loads(b[32:32 + json_len].decode()), sort_keys=True))
    at, chain, chunks, events = 32 + json_len, 0, 0, 0
    while True:
        tag = b[at:at + 4]
        if tag == b'CHNK':
            count, raw_len, comp_len, csum = struct.unpack_from('<IIIQ', b, at + 4)
            print(f'chunk at {at}: count {count} raw_len {raw_len} comp_len {comp_len} checksum {csum:#018x}')
            need(raw_len == 64 * count, 'raw_len')
            need(xxh64(b[at + 4:at + 16] + b[at + 24:at + 24 + comp_len]) == csum, 'chunk checksum')
            raw = unzstd(b[at + 24:at + 24 + comp_len])
            need(len(raw) == raw_len, 'chunk size')
            for k in range(count):
                t, vm, vcpu, code, fl, time, insn, a, bb, c = struct.unpack_from('<B3xIIII4xQQQQQ', raw, 64 * k)
                print(f'  event {events + k}: type {t} vm {vm} vcpu {vcpu} code {code:#x} flags {fl:#x} '
                      f'time {time} insn {insn} a {a:#x} b {bb:#x} c {c:#x}')
            chain = xxh64(struct.pack('<QQ', chain, csum))
            chunks, events, at = chunks + 1, events + count, at + 24 + comp_len
        elif tag == b'TEND':
            n_chunks, n_events, c, esum = struct.unpack_from('<IQQQ', b, at + 4)
            print(f'end at {at}: chunks {n_chunks} events {n_events} chain {c:#018x} checksum {esum:#018x}')
            need((n_chunks, n_events, c) == (chunks, events, chain), 'end marker counts or chain')
            need(xxh64(b[at:at + 24]) == esum, 'end marker checksum')
            need(at + 32 == len(b), 'bytes after the end marker')
            return
        else:
            sys.exit(f'check-format-kat: unknown tag {tag!r} at {at}')


for path in sys.argv[1:]:
    data = open(path, 'rb').read()
    print(f'== {path} ({len(data)} bytes)')
    {b'BATONSNP': snapshot, b'BATONTRC': trace}[data[:8]](data)
    print('ok')

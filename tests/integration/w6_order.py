#!/usr/bin/python3
"""Check rule W6 in an strace log of a ploopctl command (strace -e
trace=openat,fsync,fdatasync,renameat,renameat2,close): every delta file
the command creates is synced, and the directory after it, before the
descriptor rename; the temporary descriptor is synced before the rename;
the directory is synced after it.  Exits 1 with the reason otherwise."""
import re
import sys

events = []          # (kind, name)
fds = {}             # fd -> file name
for line in open(sys.argv[1]):
    m = re.match(r'openat\((\w+), "([^"]+)", ([^,)]+).*\) = (\d+)', line)
    if m:
        fds[m.group(4)] = (m.group(2), 'O_CREAT' in m.group(3))
        if 'O_CREAT' in m.group(3):
            events.append(('create', m.group(2)))
        continue
    m = re.match(r'f(?:data)?sync\((\d+)\)\s+= 0', line)
    if m and m.group(1) in fds:
        events.append(('sync', fds[m.group(1)][0]))
        continue
    m = re.match(r'renameat2?\(\d+, "([^"]+)", \d+, "([^"]+)"', line)
    if m:
        events.append(('rename', m.group(1)))

def fail(why):
    print('W6 violated: ' + why)
    print('\n'.join(' '.join(e) for e in events))
    sys.exit(1)

renames = [i for i, e in enumerate(events)
           if e == ('rename', 'DiskDescriptor.xml.tmp')]
if len(renames) != 1:
    fail('expected one rename of DiskDescriptor.xml.tmp')
r = renames[0]
before, after = events[:r], events[r + 1:]
deltas = [e[1] for e in before if e[0] == 'create' and '.hds' in e[1]]
if not deltas:
    fail('no delta created')
for d in deltas:
    syncs = [i for i, e in enumerate(before) if e == ('sync', d)]
    if not syncs:
        fail(d + ' not synced before the descriptor names it')
    dirsync = [i for i, e in enumerate(before)
               if e[0] == 'sync' and i > syncs[0] and e[1] not in deltas
               and not e[1].startswith('DiskDescriptor')]
    if not dirsync:
        fail('directory not synced after creating ' + d)
if ('sync', 'DiskDescriptor.xml.tmp') not in before:
    fail('DiskDescriptor.xml.tmp not synced before the rename')
if not any(e[0] == 'sync' and not e[1].startswith(('DiskDescriptor', 'root.hds'))
           for e in after):
    fail('directory not synced after the rename')
print('W6 order ok: ' + ', '.join(deltas))

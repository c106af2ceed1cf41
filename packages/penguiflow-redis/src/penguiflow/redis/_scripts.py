"""The steps that must happen at once, each one Lua script run by Redis.

Redis runs a script without interleaving any other command, so each step below either
happens whole or not at all: a worker or client that dies mid-way never leaves half of it
done. Every script says what its ``KEYS`` and ``ARGV`` are.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BURY", "CANCEL", "CLAIM", "FINISH", "FORWARD", "HAND_BACK", "RENEW"]

# Hand an entry back: if it is still pending under this worker, re-add its fields as a new
# entry and acknowledge and delete the old one, atomically (so it is never both handed
# back and done).
# KEYS: stream, running. ARGV: group, id, me, then the entry's fields (name, value, ...).
HAND_BACK: Final = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""

# Set a lease key again that expired while Redis was out of reach, if the entry is still
# pending under this worker (after its end, a key set again would outlive the request).
# KEYS: stream, key. ARGV: group, id, me, value, ttl.
RENEW: Final = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5], 'NX')
return 1
"""

# Take over idle entries (their worker stopped) that are still under the delivery limit,
# in one step: an entry at the limit is left pending for the bury step, so it is never
# delivered once more between a check of its count and the claim.
# KEYS: stream. ARGV: group, me, min_idle_ms, count, limit.
CLAIM: Final = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', 100)
local ids = {}
for _, row in ipairs(rows) do
  if #ids >= tonumber(ARGV[4]) then break end
  if tonumber(row[4]) < tonumber(ARGV[5]) then table.insert(ids, row[1]) end
end
if #ids == 0 then return {} end
return redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(ids))
"""

# Bury an entry delivered too often: if it is still pending and idle (its last worker
# stopped), copy it to the dead-letter stream, acknowledge and delete it, tell the client
# (if its reply stream is still there; the reply carries the send's tag), count it done,
# and cancel the rest of that send of the request (all of it, for an untagged entry).
# KEYS: stream, dead, reply, live, running, cancelled, cancelled runs. ARGV: group, id, me,
# min_idle_ms, error, dead_maxlen, trace, deliveries, last worker, reply_ttl, cancel_ttl,
# cancel channel, tag ('' if none).
BURY: Final = """
local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], ARGV[4], ARGV[2], 'JUSTID')
if #c == 0 then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #e > 0 then
  local f = e[1][2]
  for _, v in ipairs({'stream', KEYS[1], 'entry', ARGV[2], 'deliveries', ARGV[8],
                      'worker', ARGV[9]}) do
    table.insert(f, v)
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', unpack(f))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('XADD', KEYS[3], '*', 't', ARGV[7], 'g', ARGV[13], 'o', 'error', 'p', ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[10])
end
redis.call('DEL', KEYS[5])
if redis.call('DECR', KEYS[4]) <= 0 then
  redis.call('DEL', KEYS[4], KEYS[6], KEYS[7])
else
  if ARGV[13] ~= '' then
    redis.call('SADD', KEYS[7], ARGV[13])
    redis.call('EXPIRE', KEYS[7], ARGV[11])
  else
    redis.call('SET', KEYS[6], '1', 'EX', ARGV[11])
  end
  redis.call('PUBLISH', ARGV[12], ARGV[7])
end
return 1
"""

# Cancel a request. If no worker has taken its entry yet, delete the entry and the
# request's keys: nothing of it is left, and it can never run later. If it is still live
# elsewhere, mark it cancelled and tell the workers (each checks the marks of what it
# holds). If it has ended, do nothing (a mark left behind would cancel a later request with
# the same trace id). Given the tag of the send to cancel, only that send is marked (its
# tag joins the cancelled runs), so a later send of the same message is not cancelled with
# it; without one, the cancelled key marks every send of the trace.
# KEYS: requests, live, running, cancelled, cancelled runs. ARGV: group, entry id ('' if
# unknown), cancel ttl, cancel channel, trace, tag ('' for every send). Returns 2
# (removed), 1 (cancel sent), 0 (ended).
CANCEL: Final = """
if ARGV[2] ~= '' then
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
  if type(p) == 'table' and p.err == nil and #p == 0
      and #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) > 0 then
    redis.call('XDEL', KEYS[1], ARGV[2])
    redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
    return 2
  end
end
if redis.call('EXISTS', KEYS[2], KEYS[3]) == 0 then return 0 end
if ARGV[6] ~= '' then
  redis.call('SADD', KEYS[5], ARGV[6])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
else
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[3])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

# Append an entry to a node's stream if it has room, and count it live.
# KEYS: stream, live. ARGV: maxlen, live_ttl, field, value, ...
FORWARD: Final = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# Acknowledge and delete a session's entries; count those acknowledged done. A note
# ("cancelled") goes to the client first; when nothing of the request is left anywhere,
# its keys go and the client gets the no-result error (ignored if it has an outcome).
# Replies carry the send's tag, so the client gives them to that send only.
# KEYS: live, cancelled, reply, cancelled runs, stream of each entry. ARGV: group, n, note,
# no-result error, trace, reply ttl, tag, id of each entry.
FINISH: Final = """
local n = tonumber(ARGV[2])
local acked = 0
for i = 1, n do
  acked = acked + redis.call('XACK', KEYS[4 + i], ARGV[1], ARGV[7 + i])
  redis.call('XDEL', KEYS[4 + i], ARGV[7 + i])
end
local reply = redis.call('EXISTS', KEYS[3]) == 1
if ARGV[3] ~= '' and reply then
  redis.call('XADD', KEYS[3], '*', 't', ARGV[5], 'g', ARGV[7], 'o', ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
if acked == 0 then return 0 end
if redis.call('DECRBY', KEYS[1], acked) > 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
if reply then
  redis.call('XADD', KEYS[3], '*', 't', ARGV[5], 'g', ARGV[7], 'o', 'error', 'p', ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
return 1
"""

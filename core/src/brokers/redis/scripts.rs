//! The Lua scripts that make multi-step changes atomic on the server. Every key a script
//! touches is passed in `KEYS`. Due times come from the server's clock (`TIME`), so clients
//! with skewed clocks agree on them.

use std::sync::LazyLock;

use ::redis::Script;

/// The server's time in milliseconds, as a Lua snippet.
macro_rules! now_ms {
    () => {
        "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// Lists: moves due delayed items back to their list, then takes up to `ARGV[1]` items.
///
/// KEYS: triples of (list, processing list, delayed set), one per topic.
/// ARGV[1]: the most items to take; ARGV[2]: the topic to start with (0-based, for fairness);
/// ARGV[3]: the most delayed items to move per topic.
/// Returns `{ {topic index (0-based), item, ...}, ms until the next delayed item or -1 }`.
pub(super) static LIST_FETCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms!(),
        r#"
local topics = #KEYS / 3
local max = tonumber(ARGV[1])
local start = tonumber(ARGV[2])
local promote = tonumber(ARGV[3])
local next_due = -1
for i = 0, topics - 1 do
  local list, delayed = KEYS[i * 3 + 1], KEYS[i * 3 + 3]
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, promote)
  for _, item in ipairs(due) do
    redis.call('ZREM', delayed, item)
    redis.call('RPUSH', list, item)
  end
  local upcoming = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if #upcoming > 0 then
    local wait = math.max(0, tonumber(upcoming[2]) - now)
    if next_due < 0 or wait < next_due then next_due = wait end
  end
end
local out = {}
local taken = 0
for n = 0, topics - 1 do
  local i = (start + n) % topics
  local list, processing = KEYS[i * 3 + 1], KEYS[i * 3 + 2]
  while taken < max do
    local item = redis.call('LMOVE', list, processing, 'RIGHT', 'LEFT')
    if not item then break end
    out[#out + 1] = i
    out[#out + 1] = item
    taken = taken + 1
  end
end
return { out, next_due }
"#
    ))
});

/// Lists: settles one item of a processing list. Does nothing (returns 0) when the item is no
/// longer there (another consumer recovered it).
///
/// KEYS[1]: processing list; KEYS[2]: the topic's list; KEYS[3]: its delayed set.
/// ARGV[1]: the item as taken; ARGV[2]: `ack`, `requeue` or `delay`; ARGV[3]: the item to
/// put back; ARGV[4]: the delay in milliseconds.
pub(super) static LIST_SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms!(),
        r#"
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return 0 end
if ARGV[2] == 'requeue' then
  redis.call('RPUSH', KEYS[2], ARGV[3])
elseif ARGV[2] == 'delay' then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[3])
end
return 1
"#
    ))
});

/// Lists: puts items of a processing list back at the head of their list, in the order given
/// (the last one given is delivered first). Items no longer in the processing list are skipped.
///
/// KEYS[1]: processing list; KEYS[2]: the topic's list. ARGV: the items.
pub(super) static LIST_RETURN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local moved = 0
for _, item in ipairs(ARGV) do
  if redis.call('LREM', KEYS[1], -1, item) == 1 then
    redis.call('RPUSH', KEYS[2], item)
    moved = moved + 1
  end
end
return moved
"#,
    )
});

/// Lists: after a read whose reply was lost, gives back the items it moved: those beyond the
/// `ARGV[1]` items the consumer knows it holds, from the newest end (where reads put them).
///
/// KEYS[1]: processing list; KEYS[2]: the topic's list. Returns the number of items moved.
pub(super) static LIST_RECONCILE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local extra = redis.call('LLEN', KEYS[1]) - tonumber(ARGV[1])
local moved = 0
while moved < extra do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') then break end
  moved = moved + 1
end
return moved
"#,
    )
});

/// Lists: gives a consumer's whole processing list back to the list (oldest delivered first)
/// and unregisters the consumer, unless its heartbeat is alive.
///
/// KEYS[1]: the consumer's heartbeat; KEYS[2]: its processing list; KEYS[3]: the topic's
/// list; KEYS[4]: the topic's consumer registry. ARGV[1]: the consumer id; ARGV[2]: `force`
/// to ignore the heartbeat (a consumer closing itself).
/// Returns the number of items moved, or -1 when the consumer is alive.
pub(super) static LIST_RECOVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[2] ~= 'force' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local moved = 0
while true do
  local item = redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT')
  if not item then break end
  moved = moved + 1
end
redis.call('SREM', KEYS[4], ARGV[1])
return moved
"#,
    )
});

/// Streams: acknowledges an entry and adds a copy (attempt + 1) to the group's retry stream,
/// or to its delayed set. Does nothing (returns 0) when the entry is no longer pending.
///
/// KEYS[1]: the stream read from; KEYS[2]: the group's retry stream; KEYS[3]: its delayed set.
/// ARGV[1]: group; ARGV[2]: entry id; ARGV[3]: `1` to delete the entry after acknowledging;
/// ARGV[4]: the delay in milliseconds (0: now); ARGV[5]: the copy's fields as a netstring
/// list (the delayed set's member); ARGV[6..]: the copy's fields.
pub(super) static STREAM_REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms!(),
        r#"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
local delay = tonumber(ARGV[4])
if delay > 0 then
  redis.call('ZADD', KEYS[3], now + delay, ARGV[5])
else
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
end
return 1
"#
    ))
});

/// Streams: moves due delayed copies into their retry streams.
///
/// KEYS: pairs of (delayed set, retry stream). ARGV[1]: the most to move per pair.
/// Returns the ms until the next delayed copy is due, or -1.
pub(super) static STREAM_PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms!(),
        r#"
local function fields(s)
  local out, pos = {}, 1
  while pos <= #s do
    local colon = string.find(s, ':', pos, true)
    if not colon then break end
    local len = tonumber(string.sub(s, pos, colon - 1))
    out[#out + 1] = string.sub(s, colon + 1, colon + len)
    pos = colon + len + 2
  end
  return out
end
local next_due = -1
for i = 1, #KEYS, 2 do
  local delayed, retry = KEYS[i], KEYS[i + 1]
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
  for _, member in ipairs(due) do
    redis.call('ZREM', delayed, member)
    local f = fields(member)
    if #f >= 2 then redis.call('XADD', retry, '*', unpack(f)) end
  end
  local upcoming = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if #upcoming > 0 then
    local wait = math.max(0, tonumber(upcoming[2]) - now)
    if next_due < 0 or wait < next_due then next_due = wait end
  end
end
return next_due
"#
    ))
});

/// Streams: removes this consumer from the group when nothing is pending for it, and other
/// members silent for longer than `ARGV[3]` ms with nothing pending.
///
/// KEYS[1]: stream. ARGV[1]: group; ARGV[2]: this consumer (always removed when idle-free of
/// work, `-` for none); ARGV[3]: the idle time after which a member without work is removed.
pub(super) static STREAM_FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local removed = 0
local limit = tonumber(ARGV[3])
for _, c in ipairs(consumers) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name and pending == 0 and (name == ARGV[2] or (idle and idle >= limit)) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed = removed + 1
  end
end
return removed
"#,
    )
});

/// Encodes fields as a netstring list (`<len>:<bytes>,` each), read back by
/// [`STREAM_PROMOTE`]. Binary-safe.
pub(super) fn netstrings<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        out.extend_from_slice(field.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(field);
        out.push(b',');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstrings_are_length_prefixed() {
        assert_eq!(
            netstrings([&b"payload"[..], b"a:b,", b""]),
            b"7:payload,4:a:b,,0:,".to_vec()
        );
    }
}

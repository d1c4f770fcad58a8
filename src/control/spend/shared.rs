//! The spend ledger in Redis (`[ratelimit] redis`): every replica spends one budget. Each
//! book (service, account when the cap is `per_account`, kind, currency) is a sorted set of
//! reservation ids by time (Redis's clock, in ms) and a hash of their amounts, the
//! `Idempotency-Key`s counted (kept as long as their reservation: 24 hours, or until
//! released) and the running sum. One script call checks and reserves (all or nothing), one
//! releases; commit and hold keep what was reserved, as the local ledger does. Bounded like
//! it: [`MAX_PER_BOOK`] reservations a book, [`MAX_TOTAL`] in all (a sorted set of every
//! reservation id). Lua counts in doubles: amounts are sent at most 2^53 and `per_day` at
//! most 2^53 − 1, so every sum compared is exact (a call of more than 2^53 minor units is
//! refused; Stripe takes at most 8 digits).
//!
//! When the store is out (the heartbeat says so, or a call is not answered within
//! `ratelimit.timeout`), capped calls are refused: money caps fail closed whatever
//! `on_redis_error` says for rates.

use std::sync::LazyLock;

use super::{BookKey, DAY_MS, MAX_PER_BOOK, MAX_TOTAL, Over, Reserved, Standing};
use crate::control::limits::Store;
use crate::policy::spend::Spend;

/// The largest amount Lua counts exactly (2^53).
const MAX_EXACT: u64 = 1 << 53;

/// Drop the book's reservations older than 24 hours (KEYS[1] the set, KEYS[2] the hash;
/// `now` and `day` in ms, set before).
macro_rules! expire_lua {
    () => {
        r"
local old = now - day
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', old)
for _, id in ipairs(gone) do
  local e = redis.call('HGET', KEYS[2], 'e:' .. id)
  if e then
    local amount, key = string.match(e, '^(%d+):?(%x*)$')
    redis.call('HINCRBY', KEYS[2], 'spent', -tonumber(amount))
    if key ~= '' then redis.call('HDEL', KEYS[2], 'k:' .. key) end
    redis.call('HDEL', KEYS[2], 'e:' .. id)
  end
end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', old) end
"
    };
}

/// KEYS: the book's set and hash, every reservation's set, the id counter. ARGV: amount,
/// per_day (`-1`: none), the Idempotency-Key's hash (hex, or empty), the most a book and all
/// books hold, 24 hours in ms. Returns `{0, id, 0}` reserved, `{1, id, 0}` a replay,
/// `{2, spent, oldest ms or -1}` over the day, `{3, max, 0}` full.
const RESERVE: &str = concat!(
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = tonumber(ARGV[6])
",
    expire_lua!(),
    r"
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', old)
local key = ARGV[3]
if key ~= '' then
  local id = redis.call('HGET', KEYS[2], 'k:' .. key)
  if id then return {1, tonumber(id), 0} end
end
local amount = tonumber(ARGV[1])
local spent = tonumber(redis.call('HGET', KEYS[2], 'spent') or '0')
if ARGV[2] ~= '-1' and spent + amount > tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local at = -1
  if oldest[2] then at = tonumber(oldest[2]) end
  return {2, spent, at}
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return {3, tonumber(ARGV[4]), 0} end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return {3, tonumber(ARGV[5]), 0} end
local id = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], now, id)
redis.call('ZADD', KEYS[3], now, id)
local entry = ARGV[1]
if key ~= '' then
  entry = entry .. ':' .. key
  redis.call('HSET', KEYS[2], 'k:' .. key, id)
end
redis.call('HSET', KEYS[2], 'e:' .. id, entry)
redis.call('HINCRBY', KEYS[2], 'spent', ARGV[1])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], day + 60000) end
return {0, id, 0}
"
);

/// KEYS: the book's set and hash, every reservation's set. ARGV: the id. Gives the
/// reservation back (its amount, its Idempotency-Key).
const RELEASE: &str = r"
local e = redis.call('HGET', KEYS[2], 'e:' .. ARGV[1])
if not e then return 0 end
local amount, key = string.match(e, '^(%d+):?(%x*)$')
redis.call('HINCRBY', KEYS[2], 'spent', -tonumber(amount))
if key ~= '' then redis.call('HDEL', KEYS[2], 'k:' .. key) end
redis.call('HDEL', KEYS[2], 'e:' .. ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
";

/// KEYS: the book's set and hash. ARGV: 24 hours in ms. `{spent, oldest ms or -1}`.
const STANDING: &str = concat!(
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = tonumber(ARGV[1])
",
    expire_lua!(),
    r"
local spent = tonumber(redis.call('HGET', KEYS[2], 'spent') or '0')
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local at = -1
if oldest[2] then at = tonumber(oldest[2]) end
return {spent, at}
"
);

static RESERVE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESERVE));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));
static STANDING_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(STANDING));

/// The store did not answer (or is out): a capped call is refused, 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

/// `service` or `account` in a key: `%` and `:` escaped, so keys never collide.
fn part(s: &str) -> String {
    s.replace('%', "%25").replace(':', "%3A")
}

/// The book's sorted set; its hash is this with `:h`.
pub fn book_key(store: &Store, key: &BookKey) -> String {
    store.key(&format!(
        "spend:{}:{}:{}:{}",
        part(&key.service),
        key.account.as_deref().map_or_else(|| "-".to_string(), |a| format!("@{}", part(a))),
        key.kind.as_str(),
        key.currency
    ))
}

async fn run<T: redis::FromRedisValue>(
    store: &Store,
    call: redis::ScriptInvocation<'_>,
) -> Result<T, Unavailable> {
    if !store.is_up() {
        return Err(Unavailable("the spend store (ratelimit.redis) is out".into()));
    }
    let mut conn = store.connection();
    match tokio::time::timeout(store.spec.timeout, call.invoke_async::<T>(&mut conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the spend store (ratelimit.redis) failed; refusing capped calls");
            Err(Unavailable("the spend store (ratelimit.redis) failed".into()))
        }
        Err(_) => Err(Unavailable("the spend store (ratelimit.redis) did not answer in time".into())),
    }
}

/// Check `spend` against its cap's `per_day` and reserve it, in one script call.
pub async fn reserve(
    store: &Store,
    spend: &Spend<'_>,
    key: Option<[u8; 32]>,
) -> Result<Result<Reserved, Over>, Unavailable> {
    let book = BookKey::of(spend);
    let set = book_key(store, &book);
    let per_day = spend.cap.per_day.map_or(-1i64, |d| d.min(MAX_EXACT - 1) as i64);
    let mut call = RESERVE_SCRIPT.prepare_invoke();
    call.key(&set)
        .key(format!("{set}:h"))
        .key(store.key("spend:all"))
        .key(store.key("spend:seq"))
        .arg(spend.amount.value.min(MAX_EXACT))
        .arg(per_day)
        .arg(key.map(hex::encode).unwrap_or_default())
        .arg(MAX_PER_BOOK)
        .arg(MAX_TOTAL)
        .arg(DAY_MS);
    let (code, a, b): (u8, i64, i64) = run(store, call).await?;
    Ok(match code {
        0 | 1 => Ok(Reserved { key: book, id: a as u64, replay: code == 1 }),
        2 => Err(Over::Day {
            left: spend.cap.per_day.unwrap_or(0).saturating_sub(a.max(0) as u64),
            frees_at: (b >= 0).then(|| (b + DAY_MS).div_euclid(1000)),
        }),
        _ => Err(Over::Full { max: a as usize }),
    })
}

/// Give a reservation back (the API answered 4xx). If the store does not answer, it stays
/// counted (fail safe) until it frees after 24 hours.
pub async fn release(store: &Store, r: &Reserved) -> Result<(), Unavailable> {
    if r.replay {
        return Ok(());
    }
    let set = book_key(store, &r.key);
    let mut call = RELEASE_SCRIPT.prepare_invoke();
    call.key(&set).key(format!("{set}:h")).key(store.key("spend:all")).arg(r.id);
    run::<i64>(store, call).await.map(|_| ())
}

/// A book's spend within the last 24 hours (on Redis's clock).
pub async fn standing(store: &Store, key: &BookKey) -> Result<Standing, Unavailable> {
    let set = book_key(store, key);
    let mut call = STANDING_SCRIPT.prepare_invoke();
    call.key(&set).key(format!("{set}:h")).arg(DAY_MS);
    let (spent, oldest): (i64, i64) = run(store, call).await?;
    Ok(Standing { spent: spent.max(0) as u64, oldest_ms: (oldest >= 0).then_some(oldest) })
}

#[cfg(test)]
mod tests {
    use super::part;

    #[test]
    fn names_with_colons_never_make_the_same_key() {
        assert_eq!(part("a:b%c"), "a%3Ab%25c");
        assert_ne!(format!("{}:{}", part("a:b"), part("c")), format!("{}:{}", part("a"), part("b:c")));
    }
}

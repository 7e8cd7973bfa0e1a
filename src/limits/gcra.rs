//! The shared limiter: one Lua script decides every window of a request atomically in
//! Redis (GCRA, time from Redis's own clock), so replicas never race read-then-write
//! and their clocks need not agree. The script is sent once and then called by hash.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::Script;
use futures_util::FutureExt;

use super::policy::TierPolicy;
use crate::redis::{RedisError, SharedRedis};

/// KEYS: one per window. ARGV: the cells to reserve beyond this request (at most), the
/// share divisor (a reservation takes at most `left / divisor` of any window), then
/// interval and tolerance (µs) per window, in key order.
/// Returns `{allowed, retry_after_us, reserved, remaining_1, reset_us_1, ...}`.
/// A refused request changes nothing; an allowed one advances every window by itself
/// and the reserved cells.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local extra = tonumber(ARGV[1])
local divisor = tonumber(ARGV[2])
local tats = {}
local retry = 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i + 1])
  local tolerance = tonumber(ARGV[2 * i + 2])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  local allow_at = tat + interval - tolerance
  if allow_at > now then
    if allow_at - now > retry then retry = allow_at - now end
  else
    local left = math.floor((now + tolerance - tat - interval) / interval)
    local share = math.floor(left / divisor)
    if share < extra then extra = share end
  end
end
if retry > 0 or extra < 0 then extra = 0 end
local out = { retry > 0 and 0 or 1, retry, extra }
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i + 1])
  local tolerance = tonumber(ARGV[2 * i + 2])
  local tat = tats[i]
  if retry == 0 then
    tat = tat + interval * (1 + extra)
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  local remaining = math.floor((now + tolerance - tat) / interval)
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = tat - now
end
return out
"#;

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(SCRIPT));

/// The same windows read, not spent: KEYS and ARGV as [`SCRIPT`] takes them per window
/// (interval and tolerance, µs). Returns `{remaining_1, allow_in_us_1, ...}`: the
/// requests each window would allow now, and when it allows the next one (0: now).
const PEEK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local remaining = math.floor((now + tolerance - tat) / interval)
  if remaining < 0 then remaining = 0 end
  local allow_in = tat + interval - tolerance - now
  if allow_in < 0 then allow_in = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = allow_in
end
return out
"#;

static GCRA_PEEK: LazyLock<Script> = LazyLock::new(|| Script::new(PEEK));

/// What each of the tier's windows would allow `caller` now, spending nothing.
pub async fn peek(
    redis: &SharedRedis,
    prefix: &str,
    route: &str,
    tier: &TierPolicy,
    caller: &str,
) -> Result<Vec<WindowState>, RedisError> {
    let invocation = GCRA_PEEK.prepare_invoke();
    let reply = run_over_windows(redis, invocation, (prefix, route, caller), tier).await?;
    if reply.len() != 2 * tier.windows.len() {
        return Err(RedisError::Failed(
            "the rate-limit script answered oddly".into(),
        ));
    }
    Ok(reply
        .chunks(2)
        .map(|pair| WindowState {
            remaining: pair[0].max(0) as u64,
            reset: Duration::from_micros(pair[1].max(0) as u64),
        })
        .collect())
}

/// One window's state after a decision.
#[derive(Debug, Clone, Copy)]
pub struct WindowState {
    pub remaining: u64,
    /// Until the window is whole again.
    pub reset: Duration,
}

/// The limiter's answer for one request.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub allowed: bool,
    pub retry_after: Duration,
    /// In the tier's window order.
    pub windows: Vec<WindowState>,
    /// Cells reserved for this replica's next requests (see [`super::lease`]).
    pub reserved: u64,
}

/// What to ask the script.
pub struct Ask<'a> {
    pub prefix: &'a str,
    pub route: &'a str,
    pub tier: &'a TierPolicy,
    /// The hashed identity.
    pub caller: &'a str,
    /// Cells to reserve beyond this request, at most.
    pub want: u64,
    /// `2 × replicas`: no reservation takes more than `left / divisor` of a window.
    pub divisor: u64,
}

/// Decides one request in Redis (and reserves cells for the next ones).
pub async fn decide(redis: &SharedRedis, ask: Ask<'_>) -> Result<Verdict, RedisError> {
    let Ask {
        prefix,
        route,
        tier,
        caller,
        want,
        divisor,
    } = ask;
    let mut invocation = GCRA.prepare_invoke();
    invocation.arg(want).arg(divisor.max(1));
    let reply = run_over_windows(redis, invocation, (prefix, route, caller), tier).await?;
    parse(&reply, tier.windows.len())
        .ok_or_else(|| RedisError::Failed("the rate-limit script answered oddly".into()))
}

/// Runs a script over the tier's windows of one caller: a key per window, and its
/// interval and tolerance (µs) after the script's own arguments.
async fn run_over_windows(
    redis: &SharedRedis,
    mut invocation: deadpool_redis::redis::ScriptInvocation<'static>,
    (prefix, route, caller): (&str, &str, &str),
    tier: &TierPolicy,
) -> Result<Vec<i64>, RedisError> {
    for window in &tier.windows {
        // The hash tag keeps one caller's windows in one Redis Cluster slot.
        invocation.key(crate::redis::keys::rate_limit_window(
            prefix,
            caller,
            route,
            &window.key_suffix,
        ));
        invocation.arg(window.interval_us).arg(window.tolerance_us);
    }
    redis
        .run("rate_limit", move |conn| {
            async move { invocation.invoke_async(conn).await }.boxed()
        })
        .await
}

fn parse(reply: &[i64], windows: usize) -> Option<Verdict> {
    if reply.len() != 3 + 2 * windows {
        return None;
    }
    let micros = |v: i64| Duration::from_micros(v.max(0) as u64);
    Some(Verdict {
        allowed: reply[0] == 1,
        retry_after: micros(reply[1]),
        reserved: reply[2].max(0) as u64,
        windows: reply[3..]
            .chunks(2)
            .map(|pair| WindowState {
                remaining: pair[0].max(0) as u64,
                reset: micros(pair[1]),
            })
            .collect(),
    })
}

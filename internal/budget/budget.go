// Package budget bounds the background work regcache does for one upstream (refresh-ahead,
// watches and their tag listings): at most N requests in any window of a given length. It
// is a sliding log, not a counter: a fixed window lets 2N through across its boundary, and
// a bucket lets its depth through at once after any quiet spell. A request occupies the log
// from when it is admitted until its window has passed since it ended, so that whatever the
// network's delays, upstream never sees more than N of them in any window: each arrives
// between its admission and its end. With the Redis tier the log is a sorted set the whole
// fleet shares, judged by Redis's clock; while Redis fails, each replica keeps to its own
// log, as a lone replica (it always keeps one, so that it never spends more than the budget
// by itself). Client requests never come here.
package budget

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"regcache/upstream"
)

// Reason is whose request it is: a client's, which no budget refuses or counts, or one kind
// of background work.
type Reason uint8

// The reasons.
const (
	Client  Reason = iota // a client asked: never budgeted
	Refresh               // refresh-ahead of a tag in use
	Watch                 // a watch: a watched tag's look, or a watched repository's listing
	numReasons
)

// Background are the reasons a budget counts, as the metrics label them.
var Background = []Reason{Refresh, Watch}

var reasonNames = [numReasons]string{"client", "refresh", "watch"}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Defaults of upstreams[].budget and budget_share: auto allows DefaultRequests background
// requests per DefaultPer, and background manifest GETs at most DefaultShare percent of the
// limit the upstream announces.
const (
	DefaultRequests = 10
	DefaultPer      = time.Second
	DefaultShare    = 50
)

// Timings of the fleet's log.
const (
	redisRetry  = time.Second // after a failed call, the local log alone for this long
	logInterval = 30 * time.Second
	// retryMargin is added to a refusal's wait, so that a caller back at that time finds
	// the request gone from the log rather than leaving it.
	retryMargin = time.Millisecond
)

// Config is one upstream's budget.
type Config struct {
	// Upstream names it in errors, logs and the Redis key.
	Upstream string
	// Requests per Per bounds every background request; zero both is auto (DefaultRequests
	// per DefaultPer).
	Requests int
	Per      time.Duration
	// Share is the percentage of the limit the upstream announces (RateLimit-Limit with a
	// window, Docker Hub's "100;w=21600") that background manifest GETs may take in that
	// window: Docker Hub counts them as pulls, its HEADs and tags pages it does not.
	Share int
	// RateLimit reads what the upstream announced (upstream.Registry.RateLimit); nil:
	// nothing ever is.
	RateLimit func() upstream.RateLimitState
	// InFlight bounds how long one request may take (twice the upstream timeout is ample):
	// in the fleet's log, a request whose end is never told (its replica died) counts as
	// ended then.
	InFlight time.Duration
	// Redis, when set, holds the fleet's log under Prefix (cache.redis.key_prefix); each
	// call is bounded by OpTimeout.
	Redis     *redis.Client
	Prefix    string
	OpTimeout time.Duration
	Logger    *zap.Logger
}

// Spent is a background request refused: the budget (or, Pull, the background GETs'
// share) is spent in the current window.
type Spent struct {
	Upstream string
	Pull     bool
	// RetryAfter is the soonest a request may be admitted again: when the oldest in the
	// log leaves it.
	RetryAfter time.Duration
}

// ErrSpent matches every *Spent with errors.Is.
var ErrSpent = errors.New("background budget spent")

func (e *Spent) Error() string {
	what := "background budget"
	if e.Pull {
		what = "background manifest GETs' share of the announced rate limit"
	}
	return "upstream " + e.Upstream + ": " + what + " spent for now; retry in " + e.RetryAfter.Round(time.Millisecond).String()
}

// Is makes errors.Is(err, ErrSpent) true.
func (e *Spent) Is(target error) bool { return target == ErrSpent }

// Budget is one upstream's budget. It is safe for concurrent use.
type Budget struct {
	cfg     Config
	log     *zap.Logger
	keyAll  string // the fleet's logs: every background request, and the manifest GETs
	keyPull string
	self    string // this process's prefix for its members of the fleet's logs
	seq     atomic.Uint64

	mu sync.Mutex
	// all and pulls are this process's own logs; until and pullsUntil are when a refusal
	// said the next request may come (none may before), pullsLimit the limit that refusal
	// was judged against.
	all, pulls         window
	until, pullsUntil  time.Time
	pullsLimit         int
	taken, refused     [numReasons]uint64
	redisDown, failLog time.Time
}

// New builds a budget from cfg.
func New(cfg Config) *Budget {
	if cfg.Requests <= 0 || cfg.Per <= 0 {
		cfg.Requests, cfg.Per = DefaultRequests, DefaultPer
	}
	if cfg.Share < 0 {
		cfg.Share = 0
	}
	if cfg.InFlight <= 0 {
		cfg.InFlight = time.Minute
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 250 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	return &Budget{cfg: cfg, log: log, self: hex.EncodeToString(id[:]) + ":",
		keyAll: cfg.Prefix + "budget:" + cfg.Upstream, keyPull: cfg.Prefix + "budget:" + cfg.Upstream + ":pulls"}
}

// pullLimit is the background GETs' share of what the upstream announced, and its window;
// n < 0 while it has announced no limit with a window.
func (b *Budget) pullLimit() (n int, per time.Duration) {
	if b.cfg.RateLimit == nil {
		return -1, 0
	}
	rl := b.cfg.RateLimit()
	if !rl.Known || rl.Limit < 0 || rl.Window <= 0 {
		return -1, 0
	}
	return rl.Limit * b.cfg.Share / 100, rl.Window
}

// Take asks leave for one background request for reason; pull marks a manifest GET. On
// leave, done must be called once the request has ended (answered or failed); refused, err
// is a *Spent. Take never waits but for one Redis call.
func (b *Budget) Take(reason Reason, pull bool) (done func(), err error) {
	g, err := b.Grant(reason, pull)
	if err != nil {
		return nil, err
	}
	return g.Done, nil
}

// A Ticket is leave for one background request: Done once it has ended, or Cancel when it
// was never sent (refused on the way by the breaker or the rate-limit guard), which gives
// the leave back: a request upstream never saw spends nothing.
type Ticket struct {
	b      *Budget
	reason Reason
	pulls  bool
	member string
	once   sync.Once
}

// Done records the request's end.
func (t *Ticket) Done() { t.once.Do(func() { t.b.end(t.pulls, t.member) }) }

// Cancel gives the leave back.
func (t *Ticket) Cancel() { t.once.Do(func() { t.b.cancel(t.reason, t.pulls, t.member) }) }

// Grant is Take with a Ticket, for a caller that may find its request was never sent.
func (b *Budget) Grant(reason Reason, pull bool) (*Ticket, error) {
	pn, pper := b.pullLimit()
	pulls := pull && pn >= 0
	now := time.Now()
	b.mu.Lock()
	if e := b.roomLocked(now, pulls, pn, pper); e != nil {
		b.refused[reason]++
		b.mu.Unlock()
		return nil, e
	}
	b.all.inFlight++
	if pulls {
		b.pulls.inFlight++
	}
	b.mu.Unlock()

	member := ""
	if b.shared(now) {
		m := b.self + strconv.FormatUint(b.seq.Add(1), 10)
		wait, pullRefused, err := b.takeShared(m, pulls, pn, pper)
		switch {
		case err != nil:
			b.failed(err) // the local log alone decides, as for a lone replica
		case wait > 0:
			now := time.Now()
			b.mu.Lock()
			b.all.inFlight--
			if pulls {
				b.pulls.inFlight--
			}
			if pullRefused {
				b.pullsUntil, b.pullsLimit = later(b.pullsUntil, now.Add(wait)), pn
			} else {
				b.until = later(b.until, now.Add(wait))
			}
			b.refused[reason]++
			b.mu.Unlock()
			return nil, &Spent{Upstream: b.cfg.Upstream, Pull: pullRefused, RetryAfter: wait}
		default:
			member = m
		}
	}
	b.mu.Lock()
	b.taken[reason]++
	b.mu.Unlock()
	return &Ticket{b: b, reason: reason, pulls: pulls, member: member}, nil
}

// cancel takes back a leave whose request was never sent: it leaves this process's logs
// and the fleet's, and is not counted as taken.
func (b *Budget) cancel(reason Reason, pulls bool, member string) {
	b.mu.Lock()
	b.all.inFlight--
	if pulls {
		b.pulls.inFlight--
	}
	b.taken[reason]--
	b.mu.Unlock()
	if member != "" && b.shared(time.Now()) {
		keys := []string{b.keyAll}
		if pulls {
			keys = append(keys, b.keyPull)
		}
		ctx, cancel := b.ctx()
		defer cancel()
		if err := cancelScript.Run(ctx, b.cfg.Redis, keys, member).Err(); err != nil {
			b.failed(err) // the member stays until its TTL: the budget errs on the safe side
		}
	}
}

// roomLocked is nil when this process's logs (and the last refusals) leave room for one
// more request, or the refusal; b.mu held.
func (b *Budget) roomLocked(now time.Time, pulls bool, pn int, pper time.Duration) *Spent {
	if now.Before(b.until) {
		return &Spent{Upstream: b.cfg.Upstream, RetryAfter: b.until.Sub(now)}
	}
	if b.all.held(now, b.cfg.Per) >= b.cfg.Requests {
		wait := b.all.wait(now, b.cfg.Per)
		b.until = now.Add(wait)
		return &Spent{Upstream: b.cfg.Upstream, RetryAfter: wait}
	}
	if !pulls {
		return nil
	}
	// A refusal judged against a lower limit than the one announced now does not stand.
	if now.Before(b.pullsUntil) && pn <= b.pullsLimit {
		return &Spent{Upstream: b.cfg.Upstream, Pull: true, RetryAfter: b.pullsUntil.Sub(now)}
	}
	if b.pulls.held(now, pper) >= pn {
		wait := b.pulls.wait(now, pper)
		b.pullsUntil, b.pullsLimit = now.Add(wait), pn
		return &Spent{Upstream: b.cfg.Upstream, Pull: true, RetryAfter: wait}
	}
	return nil
}

// end records a request's end in this process's logs and the fleet's.
func (b *Budget) end(pulls bool, member string) {
	now := time.Now()
	b.mu.Lock()
	b.all.end(now)
	if pulls {
		b.pulls.end(now)
	}
	b.mu.Unlock()
	if member != "" && b.shared(now) {
		if err := b.endShared(member, pulls); err != nil {
			b.failed(err) // the entry keeps its in-flight bound: it leaves the log later, never sooner
		}
	}
}

// HeldUntil is the soonest a background request (pull: a manifest GET) may be admitted,
// as the last refusal said; zero when none holds. Callers with many requests waiting put
// them off until then instead of asking each.
func (b *Budget) HeldUntil(pull bool) time.Time {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	until := b.until
	if pull && b.pullsUntil.After(until) {
		until = b.pullsUntil
	}
	if until.After(now) {
		return until
	}
	return time.Time{}
}

// Stats is a budget's state, for the metrics.
type Stats struct {
	Upstream string
	// Limit requests per Per; Spent is how many the current window holds (the fleet's, with
	// Redis up: Shared).
	Limit  int
	Per    time.Duration
	Spent  int
	Shared bool
	// PullsLimit per PullsPer is the background manifest GETs' share of the limit the
	// upstream announces (-1 until it announces one with a window); PullsSpent is how many
	// the current window holds.
	PullsLimit int
	PullsPer   time.Duration
	PullsSpent int
	// Taken and Refused count this process's background requests admitted and refused,
	// by reason.
	Taken, Refused map[Reason]uint64
}

// Stats reads the budget; with Redis, one call for the fleet's spending.
func (b *Budget) Stats() Stats {
	pn, pper := b.pullLimit()
	now := time.Now()
	s := Stats{Upstream: b.cfg.Upstream, Limit: b.cfg.Requests, Per: b.cfg.Per, PullsLimit: pn, PullsPer: pper,
		Taken: map[Reason]uint64{}, Refused: map[Reason]uint64{}}
	b.mu.Lock()
	s.Spent = b.all.held(now, b.cfg.Per)
	if pn >= 0 {
		s.PullsSpent = b.pulls.held(now, pper)
	}
	for _, r := range Background {
		s.Taken[r], s.Refused[r] = b.taken[r], b.refused[r]
	}
	b.mu.Unlock()
	if b.shared(now) {
		all, pulls, err := b.spentShared(pn >= 0, pper)
		if err != nil {
			b.failed(err)
		} else {
			s.Spent, s.PullsSpent, s.Shared = all, pulls, true
		}
	}
	return s
}

// window is a sliding log kept in this process: the requests in flight, and the ends of
// those that ended, oldest first, for as long as a window may still hold them.
type window struct {
	inFlight int
	ended    []time.Time
}

// held is how many requests a window of length per ending now holds: those in flight, and
// those that ended at most per ago. It forgets the others.
func (w *window) held(now time.Time, per time.Duration) int {
	i := 0
	for i < len(w.ended) && now.Sub(w.ended[i]) > per {
		i++
	}
	// Resliced from the front: append moves what is left once the array is used up.
	w.ended = w.ended[i:]
	return w.inFlight + len(w.ended)
}

// wait is how long until a request leaves the log: the oldest end's window passing, or
// per when all are in flight (none can end sooner than now).
func (w *window) wait(now time.Time, per time.Duration) time.Duration {
	if len(w.ended) == 0 {
		return per + retryMargin
	}
	return w.ended[0].Add(per).Sub(now) + retryMargin
}

func (w *window) end(at time.Time) {
	w.inFlight--
	w.ended = append(w.ended, at)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// The fleet's logs are sorted sets of members scored by Redis's clock in microseconds: a
// request in flight by its admission plus the in-flight bound, an ended one by its end.
// Each script reads the clock once (TIME; scripts replicate their effects, Redis 5 on).
var (
	// takeScript: KEYS the logs to pass (every request's, and for a GET the pulls'); ARGV
	// the member, the in-flight bound (µs), then each log's limit and window (µs). It
	// returns {1} admitted, or {0, µs until the refusing log may admit, index of that log}.
	takeScript = redis.NewScript(`
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do
  local limit, per = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - per - 1)
  if redis.call('ZCARD', key) >= limit then
    local wait = per
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] and tonumber(first[2]) < now then wait = tonumber(first[2]) + per - now end
    return {0, wait + 1, i}
  end
end
local hold = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + hold, ARGV[1])
  redis.call('PEXPIRE', key, math.floor((tonumber(ARGV[2 + 2 * i]) + hold) / 1000) + 1000)
end
return {1}`)
	// endScript scores the member at the clock's now (plus one microsecond: the end is no
	// sooner than the call) in each log that still holds it.
	endScript = redis.NewScript(`
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) + 1
for _, key in ipairs(KEYS) do redis.call('ZADD', key, 'XX', now, ARGV[1]) end
return 1`)
	// cancelScript removes a member that never became a request.
	cancelScript = redis.NewScript(`
for _, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end
return 1`)
	// spentScript counts each log's members a window (ARGV, µs) ending now holds.
	spentScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('ZCOUNT', key, now - tonumber(ARGV[i]), '+inf') end
return out`)
)

// shared reports whether to use the fleet's log now: Redis set, and not failing lately.
func (b *Budget) shared(now time.Time) bool {
	if b.cfg.Redis == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return !now.Before(b.redisDown)
}

func (b *Budget) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), b.cfg.OpTimeout)
}

// takeShared adds member to the fleet's logs if they have room; wait > 0 is a refusal
// (pullRefused: by the pulls' log).
func (b *Budget) takeShared(member string, pulls bool, pn int, pper time.Duration) (wait time.Duration, pullRefused bool, err error) {
	keys := []string{b.keyAll}
	args := []any{member, b.cfg.InFlight.Microseconds(), b.cfg.Requests, b.cfg.Per.Microseconds()}
	if pulls {
		keys = append(keys, b.keyPull)
		args = append(args, pn, pper.Microseconds())
	}
	ctx, cancel := b.ctx()
	defer cancel()
	res, err := takeScript.Run(ctx, b.cfg.Redis, keys, args...).Int64Slice()
	if err != nil {
		return 0, false, err
	}
	if len(res) == 1 && res[0] == 1 {
		return 0, false, nil
	}
	if len(res) != 3 {
		return 0, false, errors.New("budget: unexpected answer from the take script")
	}
	return time.Duration(res[1])*time.Microsecond + retryMargin, res[2] == 2, nil
}

func (b *Budget) endShared(member string, pulls bool) error {
	keys := []string{b.keyAll}
	if pulls {
		keys = append(keys, b.keyPull)
	}
	ctx, cancel := b.ctx()
	defer cancel()
	return endScript.Run(ctx, b.cfg.Redis, keys, member).Err()
}

func (b *Budget) spentShared(pulls bool, pper time.Duration) (all, pullsSpent int, err error) {
	keys, args := []string{b.keyAll}, []any{b.cfg.Per.Microseconds()}
	if pulls {
		keys, args = append(keys, b.keyPull), append(args, pper.Microseconds())
	}
	ctx, cancel := b.ctx()
	defer cancel()
	res, err := spentScript.Run(ctx, b.cfg.Redis, keys, args...).Int64Slice()
	if err != nil {
		return 0, 0, err
	}
	if len(res) != len(keys) {
		return 0, 0, errors.New("budget: unexpected answer from the spent script")
	}
	if pulls {
		pullsSpent = int(res[1])
	}
	return int(res[0]), pullsSpent, nil
}

// failed turns to the local log alone for redisRetry after a failed Redis call.
func (b *Budget) failed(err error) {
	if errors.Is(err, redis.ErrClosed) {
		return // shutting down
	}
	now := time.Now()
	b.mu.Lock()
	b.redisDown = now.Add(redisRetry)
	logIt := !now.Before(b.failLog)
	if logIt {
		b.failLog = now.Add(logInterval)
	}
	b.mu.Unlock()
	if logIt {
		b.log.Warn("budget: Redis unreachable; this replica keeps to the upstream's budget on its own until it answers (logged once per 30s)",
			zap.String("upstream", b.cfg.Upstream), zap.Error(err))
	}
}

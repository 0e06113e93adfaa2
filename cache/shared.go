package cache

// The shared tier's client: a Redis or Valkey server the replicas of a fleet share, called
// with a timeout, marked down after failures in a row and probed back, with its health for
// /readyz and the metrics. Its entries are in sharedentries.go, its lock in fleetlock.go.

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// RedisConfig is the optional second tier that the replicas of a fleet share (Redis or
// Valkey).
type RedisConfig struct {
	Addr      string
	Username  string
	Password  string
	DB        int
	TLS       *tls.Config
	KeyPrefix string
	// LockTTL is the lifetime of the lock a replica holds, and renews, while it asks
	// upstream: if it dies, the others ask themselves within LockTTL. 0 means 5s.
	LockTTL time.Duration
	// OpTimeout bounds each Redis call; a miss waits at most a few of them. 0 means
	// DefaultRedisTimeout.
	OpTimeout time.Duration
}

// Defaults for zero RedisConfig fields: KeyPrefix starts every key written (so that one
// server can hold other data or several fleets), OpTimeout bounds each call.
const (
	DefaultRedisKeyPrefix = "regcache:"
	DefaultRedisTimeout   = 250 * time.Millisecond
)

// Timings of the shared tier. Redis sits beside the hit path, never on it; a miss pays a
// round trip or two to it, and a Redis that fails costs one timeout per retryEvery.
const (
	defaultLockTTL    = 5 * time.Second
	redisLogInterval  = 30 * time.Second
	retryEvery        = time.Second
	tripAfter         = 3 // failed calls in a row that mark Redis down
	lockPollFirst     = 2 * time.Millisecond
	lockPollMax       = 25 * time.Millisecond
	maxSkew           = time.Minute
	sharedManifestTTL = 7 * 24 * time.Hour
)

// shared is the second tier: tag entries with their fetch time (so every replica agrees on
// freshness), manifest bodies (verified against their digest when read back: what comes
// out of Redis is trusted no more than what comes from upstream), and the short locks that
// let one replica of a fleet ask upstream while the others wait. A failing Redis turns
// every call into a miss; the first tier and upstream carry on without it.
type shared struct {
	rdb     *redis.Client
	prefix  string
	lockTTL time.Duration
	opTime  time.Duration
	log     *zap.Logger

	closed    atomic.Bool
	up        atomic.Bool
	fails     atomic.Int32 // failed calls in a row
	dropLog   every        // the "entry refused" line
	retry     every        // a call tried while down
	failLog   every        // the "Redis failing" line
	errMu     sync.Mutex
	lastErr   error
	downSince time.Time

	errors    atomic.Int64
	garbage   atomic.Int64
	hits      atomic.Int64
	misses    atomic.Int64
	lockWaits atomic.Int64
}

// quietRedis keeps go-redis's own logger (pool dial errors, printed to stderr) out of the
// output: failures reach the log once per interval through result, with zap.
var quietRedis sync.Once

type nopRedisLogger struct{}

func (nopRedisLogger) Printf(context.Context, string, ...any) {}

// WithDefaults is cfg with its zero KeyPrefix, OpTimeout and LockTTL set to the defaults.
func (cfg RedisConfig) WithDefaults() RedisConfig {
	if cfg.KeyPrefix == "" {
		cfg.KeyPrefix = DefaultRedisKeyPrefix
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = DefaultRedisTimeout
	}
	if cfg.LockTTL <= 0 {
		cfg.LockTTL = defaultLockTTL
	}
	return cfg
}

// NewRedisClient is a client for cfg's server as regcache uses one: every call bounded by
// OpTimeout (set by WithDefaults), no retries, no warmed idle connections, and go-redis's
// own logger silenced. The shared tier and the fleet's change feed each have their own.
func NewRedisClient(cfg RedisConfig) *redis.Client {
	quietRedis.Do(func() { redis.SetLogger(nopRedisLogger{}) })
	cfg = cfg.WithDefaults()
	return redis.NewClient(&redis.Options{
		Addr: cfg.Addr, Username: cfg.Username, Password: cfg.Password, DB: cfg.DB, TLSConfig: cfg.TLS,
		// Each call's own deadline (OpTimeout) bounds its dial too; DialTimeout only bounds
		// the pool's dials outside a call.
		DialTimeout: max(time.Second, 2*cfg.OpTimeout), ReadTimeout: cfg.OpTimeout, WriteTimeout: cfg.OpTimeout,
		// Fail fast and let the caller treat it as a miss: upstream is the fallback, and a
		// retry against a Redis that is down only delays the answer. No idle connections
		// warmed in the background: their dials would outlive Close.
		MaxRetries: -1, DialerRetries: 1, PoolSize: 64, MinIdleConns: 0, ContextTimeoutEnabled: true,
		// No CLIENT SETINFO: Valkey and older Redis versions answer it with an error.
		DisableIdentity: true,
		// No RESP3 HELLO: it is not needed, and some managed servers refuse it.
		Protocol: 2,
	})
}

func newShared(cfg RedisConfig, log *zap.Logger) *shared {
	cfg = cfg.WithDefaults()
	s := &shared{
		rdb:     NewRedisClient(cfg),
		prefix:  cfg.KeyPrefix,
		lockTTL: cfg.LockTTL,
		opTime:  cfg.OpTimeout,
		log:     log,
	}
	s.up.Store(true)
	return s
}

// usable reports whether to try Redis now: always while it works; while it fails, one
// call per retryEvery probes it, so a Redis that hangs costs one timeout a second, not one
// per request. go-redis redials by itself; the probe is what notices that it is back.
func (s *shared) usable() bool {
	if s.up.Load() {
		return true
	}
	return s.retry.due(retryEvery)
}

// result records a call's outcome: failures are counted and logged once per interval;
// tripAfter of them in a row mark Redis down until a call succeeds again.
func (s *shared) result(err error) error {
	if errors.Is(err, redis.ErrClosed) {
		return err // shutting down: a miss, not an outage
	}
	if err == nil || errors.Is(err, redis.Nil) {
		if s.fails.Load() != 0 {
			s.fails.Store(0)
		}
		if !s.up.Load() && s.up.CompareAndSwap(false, true) {
			s.log.Info("redis is back; the shared tier is in use again")
		}
		return nil
	}
	s.errors.Add(1)
	s.errMu.Lock()
	s.lastErr = err
	s.errMu.Unlock()
	s.retry.mark()
	if s.fails.Add(1) < tripAfter && s.up.Load() {
		return err // one slow call is a miss, not an outage
	}
	if s.up.Swap(false) {
		s.errMu.Lock()
		s.downSince = time.Now()
		s.errMu.Unlock()
	}
	if s.failLog.due(redisLogInterval) {
		s.log.Warn("redis failing; serving from memory and upstream (logged once per 30s)", zap.Error(err))
	}
	return err
}

func (s *shared) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.opTime)
}

// write stores data at key for ttl. A failed write costs later readers a miss, nothing
// more, so it is only counted.
func (s *shared) write(key string, data []byte, ttl time.Duration) {
	if !s.usable() || ttl <= 0 {
		return
	}
	ctx, cancel := s.ctx()
	defer cancel()
	_ = s.result(s.rdb.Set(ctx, key, data, ttl).Err())
}

// remove deletes key.
func (s *shared) remove(key string) {
	if !s.usable() {
		return
	}
	ctx, cancel := s.ctx()
	defer cancel()
	_ = s.result(s.rdb.Del(ctx, key).Err())
}

// drop deletes an entry that did not decode or verify, so that it is fetched anew and
// stored right, and counts it: garbage in Redis is worth an operator's look.
func (s *shared) drop(key, why string) {
	s.garbage.Add(1)
	s.misses.Add(1)
	if s.dropLog.due(redisLogInterval) {
		s.log.Warn("redis entry refused and deleted (logged once per 30s; regcache_redis_garbage_total counts them)",
			zap.String("key", key), zap.String("reason", why))
	}
	s.remove(key)
}

// wrongType reports a key holding another Redis type than the string regcache writes.
func wrongType(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE")
}

// category names a Redis failure for /readyz, which clients can read: no addresses, no
// bytes from the peer. The log has the whole error.
func category(err error) string {
	msg := err.Error()
	var ne net.Error
	switch {
	case strings.Contains(msg, "WRONGPASS"), strings.Contains(msg, "NOAUTH"), strings.Contains(msg, "NOPERM"):
		return "authentication failed"
	case strings.Contains(msg, "x509:"), strings.Contains(msg, "tls:"):
		return "TLS handshake failed"
	case strings.Contains(msg, "connection refused"):
		return "connection refused"
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case strings.Contains(msg, "connection reset"), strings.Contains(msg, "EOF"), strings.Contains(msg, "broken pipe"):
		return "connection lost"
	case strings.Contains(msg, "no such host"):
		return "name not resolved"
	}
	return "unexpected answer"
}

// ping probes Redis; the result shows on /readyz and in the metrics.
func (s *shared) ping() error {
	ctx, cancel := s.ctx()
	defer cancel()
	return s.result(s.rdb.Ping(ctx).Err())
}

// RedisStats is the shared tier's state, for metrics and /readyz.
type RedisStats struct {
	// Up is false from a failed call until one succeeds again.
	Up bool
	// DownSince and LastError say when and why it went down (zero while up). Reason is
	// LastError's category, safe to show to clients.
	DownSince time.Time
	LastError string
	Reason    string
	// Errors counts failed calls; Garbage counts entries refused on read (undecodable, or a
	// body that does not match its digest) and deleted.
	Errors, Garbage int64
	// Hits and Misses count shared-tier reads that found a valid entry (a tag may still be
	// stale), or nothing usable; a replica waiting on another's lock counts each poll.
	Hits, Misses int64
	// LockWaits counts fetches that waited for another replica's upstream request.
	LockWaits int64
}

func (s *shared) stats() *RedisStats {
	st := &RedisStats{
		Up: s.up.Load(), Errors: s.errors.Load(), Garbage: s.garbage.Load(),
		Hits: s.hits.Load(), Misses: s.misses.Load(), LockWaits: s.lockWaits.Load(),
	}
	if !st.Up {
		s.errMu.Lock()
		st.DownSince = s.downSince
		if s.lastErr != nil {
			st.LastError, st.Reason = s.lastErr.Error(), category(s.lastErr)
		}
		s.errMu.Unlock()
	}
	return st
}

func (s *shared) close() {
	s.closed.Store(true)
	_ = s.rdb.Close()
}

package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"regcache/upstream"
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
	// OpTimeout bounds each Redis call; a miss waits at most a few of them. 0 means 250ms.
	OpTimeout time.Duration
}

// Timings of the shared tier. Redis sits beside the hit path, never on it; a miss pays a
// round trip or two to it, and a Redis that fails costs one timeout per retryEvery.
const (
	defaultLockTTL    = 5 * time.Second
	defaultOpTimeout  = 250 * time.Millisecond
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
	lastDrop  atomic.Int64 // unix nanos of the last "entry refused" line
	lastTry   atomic.Int64 // unix nanos of the last call tried while down
	lastLog   atomic.Int64 // unix nanos of the last "Redis failing" line
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

func newShared(cfg RedisConfig, log *zap.Logger) *shared {
	quietRedis.Do(func() { redis.SetLogger(nopRedisLogger{}) })
	s := &shared{
		prefix:  cfg.KeyPrefix,
		lockTTL: cfg.LockTTL,
		opTime:  cfg.OpTimeout,
		log:     log,
	}
	if s.prefix == "" {
		s.prefix = "regcache:"
	}
	if s.lockTTL <= 0 {
		s.lockTTL = defaultLockTTL
	}
	if s.opTime <= 0 {
		s.opTime = defaultOpTimeout
	}
	s.rdb = redis.NewClient(&redis.Options{
		Addr: cfg.Addr, Username: cfg.Username, Password: cfg.Password, DB: cfg.DB, TLSConfig: cfg.TLS,
		// Each call's own deadline (opTime) bounds its dial too; DialTimeout only bounds the
		// pool's dials outside a call.
		DialTimeout: max(time.Second, 2*s.opTime), ReadTimeout: s.opTime, WriteTimeout: s.opTime,
		// Fail fast and let the caller treat it as a miss: upstream is the fallback, and a
		// retry against a Redis that is down only delays the answer. No idle connections
		// warmed in the background: their dials would outlive Close.
		MaxRetries: -1, DialerRetries: 1, PoolSize: 64, MinIdleConns: 0, ContextTimeoutEnabled: true,
		// No CLIENT SETINFO: Valkey and older Redis versions answer it with an error.
		DisableIdentity: true,
		// No RESP3 HELLO: it is not needed, and some managed servers refuse it.
		Protocol: 2,
	})
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
	now := time.Now().UnixNano()
	last := s.lastTry.Load()
	return now-last >= int64(retryEvery) && s.lastTry.CompareAndSwap(last, now)
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
	s.lastTry.Store(time.Now().UnixNano())
	if s.fails.Add(1) < tripAfter && s.up.Load() {
		return err // one slow call is a miss, not an outage
	}
	if s.up.Swap(false) {
		s.errMu.Lock()
		s.downSince = time.Now()
		s.errMu.Unlock()
	}
	now := time.Now().UnixNano()
	if last := s.lastLog.Load(); now-last >= int64(redisLogInterval) && s.lastLog.CompareAndSwap(last, now) {
		s.log.Warn("redis failing; serving from memory and upstream (logged once per 30s)", zap.Error(err))
	}
	return err
}

func (s *shared) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.opTime)
}

// Redis keys are readable, for operators: <prefix>tag:<upstream>/<repo>:<tag> and
// <prefix>manifest:<upstream>/<repo>@<digest>. Neither an upstream name nor a repository
// may contain ':' after the first '/', nor '@', so the forms cannot collide.
func (s *shared) tagKey(up, repo, tag string) string {
	return s.prefix + "tag:" + up + "/" + repo + ":" + tag
}

func (s *shared) manifestKey(up, repo string, d digest.Digest) string {
	return s.prefix + "manifest:" + up + "/" + repo + "@" + string(d)
}

// sharedTag is a TagEntry as stored in Redis.
type sharedTag struct {
	Digest    string `json:"digest"`
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
	FetchedAt int64  `json:"fetchedAt"` // unix nanoseconds
	PrevD     string `json:"prevDigest,omitempty"`
	PrevM     string `json:"prevMediaType,omitempty"`
	PrevS     int64  `json:"prevSize,omitempty"`
}

func (s *shared) getTag(up, repo, tag string) *TagEntry {
	return readEntry(s, s.tagKey(up, repo, tag), func(data []byte) (*TagEntry, string) { return decodeTag(data, time.Now()) })
}

// readEntry reads key and decodes it. A miss, or Redis failing, is nil; an entry that does
// not decode (or a key of another Redis type) is deleted, counted, and nil.
func readEntry[T any](s *shared, key string, decode func([]byte) (*T, string)) *T {
	if !s.usable() {
		return nil
	}
	ctx, cancel := s.ctx()
	defer cancel()
	data, err := s.rdb.Get(ctx, key).Bytes()
	if wrongType(err) {
		s.drop(key, "not a string value")
		return nil
	}
	if s.result(err) != nil || err != nil {
		s.misses.Add(1)
		return nil
	}
	e, why := decode(data)
	if e == nil {
		s.drop(key, why)
		return nil
	}
	s.hits.Add(1)
	return e
}

// decodeTag reads a tag entry as Redis holds it; why says what was wrong when it is nil.
func decodeTag(data []byte, now time.Time) (e *TagEntry, why string) {
	var st sharedTag
	if json.Unmarshal(data, &st) != nil {
		return nil, "not a tag entry"
	}
	d, err := digest.Parse(st.Digest)
	// A fetch time ahead of our clock would keep the tag fresh for as long: beyond a
	// minute of clock skew between replicas it is garbage.
	if err != nil || !validMediaType(st.MediaType) || st.Size < 0 || st.Size > upstream.MaxManifestSize ||
		st.FetchedAt <= 0 || st.FetchedAt > now.Add(maxSkew).UnixNano() {
		return nil, "tag entry with a bad digest, media type, size or time"
	}
	e = &TagEntry{
		Descriptor: upstream.Descriptor{MediaType: st.MediaType, Digest: d, Size: st.Size},
		FetchedAt:  time.Unix(0, st.FetchedAt),
	}
	if pd, err := digest.Parse(st.PrevD); err == nil && validMediaType(st.PrevM) && st.PrevS >= 0 && st.PrevS <= upstream.MaxManifestSize {
		e.Previous = upstream.Descriptor{MediaType: st.PrevM, Digest: pd, Size: st.PrevS}
	}
	return e, ""
}

func encodeTag(e *TagEntry) []byte {
	data, _ := json.Marshal(sharedTag{
		Digest: string(e.Digest), MediaType: e.MediaType, Size: e.Size, FetchedAt: e.FetchedAt.UnixNano(),
		PrevD: string(e.Previous.Digest), PrevM: e.Previous.MediaType, PrevS: e.Previous.Size,
	})
	return data
}

// setTag shares e until it is past serving even as stale.
func (s *shared) setTag(up, repo, tag string, e *TagEntry, ttl time.Duration) {
	s.write(s.tagKey(up, repo, tag), encodeTag(e), ttl)
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

// A manifest is stored as "v1\n" + media type + "\n" + body.
const manifestMagic = "v1\n"

// getManifest reads a body back and verifies it against d, the digest in its key.
func (s *shared) getManifest(up, repo string, d digest.Digest) *ManifestEntry {
	if !d.Algorithm().Available() {
		return nil
	}
	return readEntry(s, s.manifestKey(up, repo, d), func(data []byte) (*ManifestEntry, string) { return decodeManifest(data, d) })
}

// decodeManifest reads a manifest entry as Redis holds it and verifies it against d, the
// digest in its key; why says what was wrong when it is nil.
func decodeManifest(data []byte, d digest.Digest) (e *ManifestEntry, why string) {
	rest, ok := bytes.CutPrefix(data, []byte(manifestMagic))
	mt, body, ok2 := bytes.Cut(rest, []byte("\n"))
	if !ok || !ok2 || !validMediaType(string(mt)) || len(body) > upstream.MaxManifestSize {
		return nil, "not a manifest entry"
	}
	if !d.Algorithm().Available() || d.Algorithm().FromBytes(body) != d {
		return nil, "manifest body does not match its digest"
	}
	// The check upstream's answers pass: a JSON object, whose own mediaType, when it
	// names one, is the type stored beside it.
	if got, why := upstream.ManifestType(body, string(mt)); why != "" || got != string(mt) {
		return nil, "manifest body is not a JSON object or contradicts its media type"
	}
	b := bytes.Clone(body)
	return &ManifestEntry{Descriptor: upstream.Descriptor{MediaType: string(mt), Digest: d, Size: int64(len(b))}, Body: b}, ""
}

func encodeManifest(m upstream.Manifest) []byte {
	buf := make([]byte, 0, len(manifestMagic)+len(m.MediaType)+1+len(m.Body))
	return append(append(append(append(buf, manifestMagic...), m.MediaType...), '\n'), m.Body...)
}

// setManifest shares a verified manifest; only whole ones, since a descriptor alone is
// in the tag entry that led to it.
func (s *shared) setManifest(up, repo string, m upstream.Manifest) {
	if m.Body != nil {
		s.write(s.manifestKey(up, repo, m.Digest), encodeManifest(m), sharedManifestTTL)
	}
}

// drop deletes an entry that did not decode or verify, so that it is fetched anew and
// stored right, and counts it: garbage in Redis is worth an operator's look.
func (s *shared) drop(key, why string) {
	s.garbage.Add(1)
	s.misses.Add(1)
	now := time.Now().UnixNano()
	if last := s.lastDrop.Load(); now-last >= int64(redisLogInterval) && s.lastDrop.CompareAndSwap(last, now) {
		s.log.Warn("redis entry refused and deleted (logged once per 30s; regcache_redis_garbage_total counts them)",
			zap.String("key", key), zap.String("reason", why))
	}
	s.remove(key)
}

// validMediaType accepts what may go out as a Content-Type: the rule upstream's answers
// pass, so that whatever regcache stores reads back.
func validMediaType(mt string) bool { return upstream.ValidMediaType(mt) }

// A lock's value is "<token>:<unix milliseconds of its last renewal>". The holder rewrites
// it at every renewal, so a waiter can tell a holder that stopped renewing (it died, or
// hangs) from a slow one, whatever lifetime the key was given. The scripts act only on a
// value that starts with the caller's own token.
var (
	unlockScript = redis.NewScript(`local v = redis.call("get", KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0`)
	renewScript = redis.NewScript(`local v = redis.call("get", KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then return redis.call("set", KEYS[1], ARGV[2], "PX", ARGV[3]) end
return 0`)
	// takeOverScript replaces a lock whose holder stopped renewing, if it is still the
	// value the waiter saw: of several waiters, one takes it and the others wait for it.
	takeOverScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("set", KEYS[1], ARGV[2], "PX", ARGV[3]) end
return 0`)
)

// lockValue is a lock's value for token, renewed at t.
func lockValue(token string, t time.Time) string {
	return token + ":" + strconv.FormatInt(t.UnixMilli(), 10)
}

// lockRenewedAt reads the renewal time out of a lock's value; ok is false for a value in
// another format (an older regcache's bare token, or garbage).
func lockRenewedAt(v string) (t time.Time, ok bool) {
	i := strings.LastIndexByte(v, ':')
	if i < 0 {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(v[i+1:], 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}

// renewEvery is how often a holder renews its lock; stallAfter is how long a lock may go
// unrenewed before its waiters go around its holder: a renewal missed and the next one as
// slow as a Redis call may be.
func (s *shared) renewEvery() time.Duration { return s.lockTTL / 3 }
func (s *shared) stallAfter() time.Duration { return 2*s.renewEvery() + s.opTime }

// lock takes the fleet-wide lock on key for at most lockTTL. mine false means another
// replica holds it. Without Redis there is no fleet to wait for: mine is true.
func (s *shared) lock(key string) (release func(), mine bool) {
	noop := func() {}
	if !s.usable() {
		return noop, true
	}
	token := newLockToken()
	lk := s.prefix + "lock:" + key
	ctx, cancel := s.ctx()
	defer cancel()
	got, err := s.rdb.SetNX(ctx, lk, lockValue(token, time.Now()), s.lockTTL).Result()
	if s.result(err) != nil {
		return noop, true
	}
	if !got {
		return nil, false
	}
	return s.hold(lk, token), true
}

// takeOver takes key's lock from a holder that stopped renewing it, if its value is still
// seen; mine false means Redis failed or another waiter took it first.
func (s *shared) takeOver(key, seen string) (release func(), mine bool) {
	if !s.usable() {
		return nil, false
	}
	token := newLockToken()
	lk := s.prefix + "lock:" + key
	ctx, cancel := s.ctx()
	defer cancel()
	n, err := takeOverScript.Run(ctx, s.rdb, []string{lk}, seen, lockValue(token, time.Now()), s.lockTTL.Milliseconds()).Result()
	if s.result(err) != nil || n == int64(0) {
		return nil, false
	}
	return s.hold(lk, token), true
}

func newLockToken() string {
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	return hex.EncodeToString(tok[:])
}

// hold renews the lock lk, ours under token, until the returned release: an upstream
// slower than lockTTL must not let the others think we died. A holder that dies stops
// renewing, which its waiters notice within stallAfter, and the lock expires.
func (s *shared) hold(lk, token string) (release func()) {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(s.renewEvery())
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				ctx, cancel := s.ctx()
				_ = s.result(renewScript.Run(ctx, s.rdb, []string{lk}, token+":", lockValue(token, now), s.lockTTL.Milliseconds()).Err())
				cancel()
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		// Only our own token is deleted: past lockTTL the lock may be another replica's.
		ctx, cancel := s.ctx()
		defer cancel()
		_ = s.result(unlockScript.Run(ctx, s.rdb, []string{lk}, token+":").Err())
	}
}

// holder is the value of key's lock while another replica holds it; held is false when
// it is free, or Redis fails.
func (s *shared) holder(key string) (value string, held bool) {
	if !s.usable() {
		return "", false
	}
	ctx, cancel := s.ctx()
	defer cancel()
	v, err := s.rdb.Get(ctx, s.prefix+"lock:"+key).Result()
	if s.result(err) != nil || err != nil {
		return "", false
	}
	return v, true
}

// stalled reports a holder that stopped renewing: its value (which every renewal changes)
// has not changed for stallAfter by this replica's clock, or the renewal time it carries
// is older than that by more than the clock skew replicas are allowed.
func (s *shared) stalled(value string, seenSince, now time.Time) bool {
	if now.Sub(seenSince) > s.stallAfter() {
		return true
	}
	at, ok := lockRenewedAt(value)
	return ok && now.Sub(at) > s.stallAfter()+maxSkew
}

// fleet makes one replica of a fleet ask upstream for key while the others wait for the
// answer it shares: look reads the shared tier, fetch asks upstream and shares the answer.
// Without a shared tier (s nil) it is fetch alone.
// A waiter asks upstream itself when the lock goes without an answer appearing (the holder
// failed), takes the lock over when its holder stops renewing it (died or hung), and in
// any case stops waiting after wait (revalidate_wait plus the upstream timeout: longer,
// a live holder's own request has timed out).
func fleet[V any](s *shared, key string, wait time.Duration, look func() (V, bool), fetch func() (V, error)) (V, error) {
	if s == nil {
		return fetch() // no shared tier: no fleet to coalesce with
	}
	if v, ok := look(); ok {
		return v, nil
	}
	release, mine := s.lock(key)
	if !mine {
		s.lockWaits.Add(1)
		var v V
		var done bool
		var err error
		if v, release, done, err = await(s, key, wait, look); done {
			return v, err
		}
		mine = release != nil
	}
	if mine {
		defer release()
		// The replica that held the lock before may have shared its answer and let go
		// between our look and our lock.
		if v, ok := look(); ok {
			return v, nil
		}
	}
	v, err := fetch()
	if err != nil && mine {
		s.setFailure(key, err) // before the lock goes: the waiters read it then
	}
	return v, err
}

// await waits for key's holder: done with its answer or its failure, or not done, with
// the lock taken over (release) or none, for the caller to fetch itself.
func await[V any](s *shared, key string, wait time.Duration, look func() (V, bool)) (v V, release func(), done bool, err error) {
	deadline := time.Now().Add(wait)
	var seen string
	var seenSince time.Time
	for poll := lockPollFirst; !s.closed.Load(); poll = min(poll*3/2, lockPollMax) {
		time.Sleep(poll)
		if v, ok := look(); ok {
			return v, nil, true, nil
		}
		value, held := s.holder(key)
		if !held {
			// The holder is done: its answer may have landed between the two calls, or it
			// failed and said why.
			if v, ok := look(); ok {
				return v, nil, true, nil
			}
			if err := s.failure(key); err != nil {
				return v, nil, true, err
			}
			return v, nil, false, nil
		}
		now := time.Now()
		if value != seen {
			seen, seenSince = value, now
		}
		if s.stalled(value, seenSince, now) {
			if release, mine := s.takeOver(key, value); mine {
				return v, release, false, nil
			}
			seen = "" // another waiter took it over: wait for that one afresh
		}
		if now.After(deadline) {
			break
		}
	}
	return v, nil, false, nil
}

// failureTTL is how long a holder's upstream failure answers the replicas that waited for
// it: long enough for a burst, short enough that the next request asks again.
const failureTTL = 2 * time.Second

// sharedFailure is an upstream error as stored for the waiters.
type sharedFailure struct {
	Kind       upstream.Kind `json:"kind"`
	Upstream   string        `json:"upstream"`
	Status     int           `json:"status,omitempty"`
	Code       string        `json:"code,omitempty"`
	Message    string        `json:"message"`
	RetryAfter int64         `json:"retryAfterMs,omitempty"`
	Timeout    bool          `json:"timeout,omitempty"`
	// Credentials: the holder's credentials were refused at the token endpoint.
	Credentials bool `json:"credentials,omitempty"`
}

// setFailure tells the waiters on key why upstream gave no answer, so that a fleet facing
// a 404, a 429 or a dead upstream asks once, not once per replica. Only upstream's own
// errors are shared (their messages never carry credentials).
func (s *shared) setFailure(key string, err error) {
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Busy {
		return // a full concurrency bound is this replica's state: the others may ask
	}
	data, _ := json.Marshal(sharedFailure{Kind: ue.Kind, Upstream: ue.Upstream, Status: ue.Status, Code: ue.Code,
		Message: ue.Message, RetryAfter: ue.RetryAfter.Milliseconds(), Timeout: ue.Timeout, Credentials: ue.Credentials})
	s.write(s.prefix+"failed:"+key, data, failureTTL)
}

// failure is the error a holder shared for key, or nil.
func (s *shared) failure(key string) error {
	if !s.usable() {
		return nil
	}
	ctx, cancel := s.ctx()
	defer cancel()
	data, err := s.rdb.Get(ctx, s.prefix+"failed:"+key).Bytes()
	if s.result(err) != nil || err != nil {
		return nil
	}
	var f sharedFailure
	if json.Unmarshal(data, &f) != nil || f.Kind < upstream.KindNotFound || f.Kind > upstream.KindInvalid || f.Message == "" {
		return nil
	}
	return &upstream.Error{Kind: f.Kind, Upstream: f.Upstream, Status: f.Status, Code: f.Code, Message: f.Message,
		RetryAfter: time.Duration(f.RetryAfter) * time.Millisecond, Timeout: f.Timeout, Credentials: f.Credentials && f.Kind == upstream.KindUnavailable}
}

// delTag removes a tag upstream said is gone, so that no replica serves it from Redis.
func (s *shared) delTag(up, repo, tag string) { s.remove(s.tagKey(up, repo, tag)) }

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

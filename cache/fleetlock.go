package cache

// The fleet lock: one replica asks upstream while the others wait for its answer in Redis,
// going around a holder that stops renewing, and sharing the holder's upstream error.

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"regcache/upstream"
)

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
// replica holds it. With Redis failing there is no fleet to wait for: mine is true, with
// no lock to release.
func (s *shared) lock(key string) (release func(), mine bool) {
	if !s.usable() {
		return nil, true
	}
	token := newLockToken()
	lk := s.prefix + "lock:" + key
	ctx, cancel := s.ctx()
	defer cancel()
	got, err := s.rdb.SetNX(ctx, lk, lockValue(token, time.Now()), s.lockTTL).Result()
	if s.result(err) != nil {
		return nil, true
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

// await waits for key's holder: done once arrived reports its answer, or with the failure
// the holder shared; not done, with the lock taken over (release) or none, for the caller
// to ask upstream itself. It stops waiting after wait (revalidate_wait plus the upstream
// timeout: longer, a live holder's own request has timed out).
func (s *shared) await(key string, wait time.Duration, arrived func() bool) (release func(), done bool, err error) {
	s.lockWaits.Add(1)
	deadline := time.Now().Add(wait)
	var seen string
	var seenSince time.Time
	for poll := lockPollFirst; !s.closed.Load(); poll = min(poll*3/2, lockPollMax) {
		time.Sleep(poll)
		if arrived() {
			return nil, true, nil
		}
		value, held := s.holder(key)
		if !held {
			// The holder is done: its answer may have landed between the two calls, or it
			// failed and said why.
			if arrived() {
				return nil, true, nil
			}
			if err := s.failure(key); err != nil {
				return nil, true, err
			}
			return nil, false, nil
		}
		now := time.Now()
		if value != seen {
			seen, seenSince = value, now
		}
		if s.stalled(value, seenSince, now) {
			if release, mine := s.takeOver(key, value); mine {
				return release, false, nil
			}
			seen = "" // another waiter took it over: wait for that one afresh
		}
		if now.After(deadline) {
			break
		}
	}
	return nil, false, nil
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
	if !errors.As(err, &ue) || ue.Busy || ue.BreakerOpen {
		return // a full concurrency bound or an open breaker is this replica's state: the others may ask
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

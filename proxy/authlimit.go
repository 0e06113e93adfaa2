package proxy

import (
	"bytes"
	"container/list"
	"net/netip"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/crypto/bcrypt"
)

// A failed Basic check costs a bcrypt comparison (~50 ms of CPU at the default cost), and
// so does an unknown user (compared against a dummy hash so that names cannot be probed);
// a wrong Bearer token costs nothing but is a guess all the same. failureLimiter rations
// those checks per client: each client (an IPv4 address, or an IPv6 /64) may spend
// failureLimit of them per failureWindow on credentials that turn out wrong. Beyond that,
// requests that would need a check are answered 429 TOOMANYREQUESTS with Retry-After,
// unchecked, for a block that doubles with each repeat (1, 2, 4, 8 minutes, then 15 at
// most) and is forgotten after 15 quiet minutes.
//
// Only checks are rationed: a remembered verification (any credentials that verified in
// the last minute, a token until it expires) passes while its address is blocked, a
// request without credentials (a client's first ping) still gets its 401 challenge, and an
// expired token this process signed is a client's stale token rather than a guess.
// Attempts are counted before the check and refunded when it succeeds, so concurrent
// guesses cannot race past the limit. The table is an LRU of failureMaxClients entries
// (~200 B each); an attacker with more addresses than that can push entries out, but also
// spends them.
type failureLimiter struct {
	limit     int
	window    time.Duration
	maxBlock  time.Duration
	maxKeys   int
	mu        sync.Mutex
	entries   map[netip.Addr]*list.Element
	lru       list.List // of *failureEntry, most recently touched first
	refusedCt uint64    // attempts answered 429, for tests and logs
}

type failureEntry struct {
	key          netip.Addr
	windowStart  time.Time
	count        int // checks spent on failures in this window (in-flight ones included)
	strikes      int // blocks in a row
	blockedUntil time.Time
	last         time.Time // the last counted attempt, or the end of the last block
}

const (
	failureLimit      = 10
	failureWindow     = time.Minute
	failureMaxBlock   = 15 * time.Minute
	failureMaxClients = 10_000
)

func newFailureLimiter() *failureLimiter {
	return &failureLimiter{limit: failureLimit, window: failureWindow, maxBlock: failureMaxBlock, maxKeys: failureMaxClients,
		entries: map[netip.Addr]*list.Element{}}
}

// acquire asks to spend one check for key. Zero means go ahead (the attempt is
// counted as a failure until refunded); otherwise key is blocked for the duration returned.
func (l *failureLimiter) acquire(key netip.Addr, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entry(key)
	if now.Before(e.blockedUntil) {
		l.refusedCt++
		return e.blockedUntil.Sub(now)
	}
	if now.Sub(e.last) > l.maxBlock {
		e.strikes = 0 // quiet long enough: start over
	}
	if now.Sub(e.windowStart) >= l.window {
		e.windowStart, e.count = now, 0
	}
	if e.count >= l.limit {
		e.strikes++
		block := min(l.window<<min(e.strikes-1, 16), l.maxBlock)
		e.blockedUntil = now.Add(block)
		e.windowStart, e.count = e.blockedUntil, 0
		e.last = e.blockedUntil // quiet time counts from the block's end
		l.refusedCt++
		return block
	}
	e.count++
	e.last = now
	return 0
}

// refund gives back an attempt that acquire counted and that succeeded.
func (l *failureLimiter) refund(key netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.entries[key]; ok {
		e := el.Value.(*failureEntry)
		e.count = max(e.count-1, 0)
	}
}

// entry finds or makes key's entry, as the most recently touched, evicting the least
// recently touched when the table is full.
func (l *failureLimiter) entry(key netip.Addr) *failureEntry {
	if el, ok := l.entries[key]; ok {
		l.lru.MoveToFront(el)
		return el.Value.(*failureEntry)
	}
	if len(l.entries) >= l.maxKeys {
		if back := l.lru.Back(); back != nil {
			delete(l.entries, back.Value.(*failureEntry).key)
			l.lru.Remove(back)
		}
	}
	e := &failureEntry{key: key}
	l.entries[key] = l.lru.PushFront(e)
	return e
}

func (l *failureLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries)
}

// attempt is one request's credential check, as far as the limiter is concerned. With a
// nil ctx (check, the unlimited form) checks are always allowed.
type attempt struct {
	a   *ClientAuth
	ctx *fasthttp.RequestCtx
	key netip.Addr
	// counted: begin spent one of the client's attempts (given back on success);
	// wait > 0: the client is blocked and the check was refused; busy: no bcrypt slot came
	// free in time (hashlimit.go).
	counted bool
	wait    time.Duration
	busy    bool
}

// begin is asked right before a check that could succeed (a token or a password to
// compare); a remembered verification needs none. It counts the attempt as a failure until
// done refunds it, and refuses it while the client is blocked: from there not even a right
// token is checked, or its answer would tell it apart from the wrong ones.
func (t *attempt) begin() bool {
	if t.ctx == nil {
		return true
	}
	t.key = t.a.clientKey(t.ctx)
	t.wait = t.a.failures.acquire(t.key, t.a.now())
	t.counted = t.wait == 0
	return t.counted
}

// forgive gives back the attempt: it failed, but was no guess.
func (t *attempt) forgive() {
	if t.counted {
		t.a.failures.refund(t.key)
		t.counted = false
	}
}

// compare is one bcrypt comparison of pass against hash, within the global bound; false
// too when no slot came free in time (done answers 429 then).
func (t *attempt) compare(hash, pass []byte) bool {
	if !t.a.hashes.acquire() {
		t.busy = true
		return false
	}
	defer t.a.hashes.release()
	return bcrypt.CompareHashAndPassword(hash, pass) == nil
}

// done settles the attempt: a success refunds it. It reports whether the request was
// refused for too many failures, and answers 429 then.
func (t *attempt) done(ok bool) (refused bool) {
	if t.ctx == nil {
		return false
	}
	switch {
	case t.wait > 0:
		writeError(t.ctx, errTooManyRequests.with("too many failed authentication attempts from this address; retry later").retryIn(t.wait))
		return true
	case t.busy:
		t.forgive() // nothing was checked: no failure of this client's
		writeError(t.ctx, errTooManyRequests.with("too many logins at once; retry shortly").retryIn(time.Second))
		return true
	case ok:
		t.forgive()
	}
	return false
}

// clientKey is who the limiter counts against: the peer address, or with
// trust_forwarded_headers the address the proxy in front appended to X-Forwarded-For last.
// IPv6 clients are counted by /64, which one host usually holds whole.
func (a *ClientAuth) clientKey(ctx *fasthttp.RequestCtx) netip.Addr {
	var ip netip.Addr
	if a.trustForwarded {
		if xff := ctx.Request.Header.Peek("X-Forwarded-For"); len(xff) > 0 {
			last := xff
			for i := len(xff) - 1; i >= 0; i-- {
				if xff[i] == ',' {
					last = xff[i+1:]
					break
				}
			}
			ip, _ = netip.ParseAddr(string(bytes.TrimSpace(last)))
		}
	}
	if !ip.IsValid() {
		ip, _ = netip.AddrFromSlice(ctx.RemoteIP())
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		if p, err := ip.Prefix(64); err == nil {
			ip = p.Addr()
		}
	}
	return ip
}

package proxy

import (
	"bytes"
	"container/list"
	"net/netip"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// A failed Basic check costs a bcrypt comparison (~50 ms of CPU at the default cost), and
// so does an unknown user (compared against a dummy hash so that names cannot be probed).
// failureLimiter rations those comparisons per client: each client (an IPv4 address, or an
// IPv6 /64) may spend failureLimit of them per failureWindow on credentials that turn out
// wrong. Beyond that, requests that would need a comparison are answered 429
// TOOMANYREQUESTS with Retry-After, without one, for a block that doubles with each
// repeat (1, 2, 4, 8 minutes, then 15 at most) and is forgotten after 15 quiet minutes.
//
// Only comparisons are rationed: a remembered verification, a static token or an issued
// token never needs one and passes while its address is blocked, and a request without
// credentials (a client's first ping) still gets its 401 challenge. Attempts are counted
// before the comparison and refunded when it succeeds, so concurrent guesses cannot race
// past the limit. The table is an LRU of failureMaxClients entries (~200 B each); an
// attacker with more addresses than that can push entries out, but also spends them.
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
	count        int // comparisons spent on failures in this window (in-flight ones included)
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

// acquire asks to spend one comparison for key. Zero means go ahead (the attempt is
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
// nil ctx (check, the unlimited form) comparisons are always allowed.
type attempt struct {
	a   *ClientAuth
	ctx *fasthttp.RequestCtx
	key netip.Addr
	// hashed: the check needed a bcrypt comparison; wait > 0: it was refused one.
	hashed bool
	wait   time.Duration
}

// mayHash is asked right before a bcrypt comparison.
func (t *attempt) mayHash() bool {
	t.hashed = true
	if t.ctx == nil {
		return true
	}
	t.key = t.a.clientKey(t.ctx)
	t.wait = t.a.failures.acquire(t.key, t.a.now())
	return t.wait == 0
}

// done settles the attempt: a success refunds its comparison. It reports whether the
// request was refused for too many failures, and answers 429 then.
func (t *attempt) done(ok bool) (refused bool) {
	if t.ctx == nil || !t.hashed {
		return false
	}
	if t.wait > 0 {
		e := newError(fasthttp.StatusTooManyRequests, codeTooManyRequests, "too many failed authentication attempts from this address; retry later")
		e.retryAfter = t.wait
		writeError(t.ctx, e)
		return true
	}
	if ok {
		t.a.failures.refund(t.key)
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

package proxy

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestBcryptBoundedGlobally: a login storm from many addresses, each under its own failure
// limit, never runs more bcrypt comparisons at once than the bound (the number of CPUs).
// Before, 32 addresses ran 32 at once and starved every other request.
func TestBcryptBoundedGlobally(t *testing.T) {
	a, _ := newTestAuth(t, ClientAuthOptions{Users: map[string]string{"alice": bcryptHash(t, "alice-pw")}})
	if n := cap(a.hashes.slots); n != runtime.GOMAXPROCS(0) {
		t.Errorf("bound %d, want GOMAXPROCS %d", n, runtime.GOMAXPROCS(0))
	}
	const bound, clients, each = 2, 32, 3
	a.hashes = newHashSlots(bound, time.Minute) // a long wait: every login gets its comparison, in turn
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range each {
				ctx := limitedCtx("/v2/", fmt.Sprintf("198.18.0.%d", c+1), basicHeader("alice", fmt.Sprint("guess-", i)))
				a.authorize(ctx, []byte("/v2/"))
				mu.Lock()
				codes[ctx.Response.StatusCode()]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if codes[401] != clients*each {
		t.Errorf("statuses %v, want %d x 401", codes, clients*each)
	}
	if peak := a.hashes.peak.Load(); peak < 1 || peak > bound {
		t.Fatalf("%d bcrypt comparisons ran at once, want at most %d", peak, bound)
	}
}

// TestBcryptBusyAnswers429: with every slot taken for longer than the wait, a login is
// answered 429 with Retry-After, unchecked and not counted against its address; checks
// that need no comparison go on.
func TestBcryptBusyAnswers429(t *testing.T) {
	const static = "static-token-0123456789"
	a, _ := newTestAuth(t, ClientAuthOptions{Users: map[string]string{"alice": bcryptHash(t, "alice-pw")}, Tokens: []string{static}})
	a.hashes = newHashSlots(1, 20*time.Millisecond)
	if !a.hashes.acquire() { // a storm holds the only slot
		t.Fatal("no slot")
	}
	const addr = "198.51.100.50"
	for _, h := range []string{basicHeader("alice", "alice-pw"), basicHeader("mallory", "x")} {
		code, ctx := limitedStatus(a, addr, h)
		if code != fasthttp.StatusTooManyRequests || string(ctx.Response.Header.Peek("Retry-After")) != "1" ||
			!strings.Contains(string(ctx.Response.Body()), `"TOOMANYREQUESTS"`) {
			t.Fatalf("%.20q while bcrypt is busy: %d, Retry-After %q, %s; want 429 TOOMANYREQUESTS after 1",
				h, code, ctx.Response.Header.Peek("Retry-After"), ctx.Response.Body())
		}
	}
	tctx := limitedCtx("/token", addr, basicHeader("alice", "alice-pw"))
	a.serveToken(tctx)
	if tctx.Response.StatusCode() != fasthttp.StatusTooManyRequests {
		t.Errorf("/token while bcrypt is busy: %d, want 429", tctx.Response.StatusCode())
	}
	if e := a.failures.entries[netip.MustParseAddr(addr)]; e != nil && e.Value.(*failureEntry).count != 0 {
		t.Errorf("busy refusals counted %d failures against the address", e.Value.(*failureEntry).count)
	}
	if code, _ := limitedStatus(a, addr, "Bearer "+static); code != 200 {
		t.Errorf("static token while bcrypt is busy: %d, want 200", code)
	}
	a.hashes.release()
	if code, _ := limitedStatus(a, addr, basicHeader("alice", "alice-pw")); code != 200 {
		t.Errorf("right password once a slot is free: %d, want 200", code)
	}
}

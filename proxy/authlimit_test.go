package proxy

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestFailureLimiterWindowAndBackoff(t *testing.T) {
	l := newFailureLimiter()
	key := netip.MustParseAddr("192.0.2.7")
	now := time.Unix(1_700_000_000, 0)
	spend := func(n int) {
		t.Helper()
		for i := range n {
			if wait := l.acquire(key, now); wait != 0 {
				t.Fatalf("attempt %d of %d refused (%v)", i+1, n, wait)
			}
		}
	}
	spend(failureLimit)
	if wait := l.acquire(key, now); wait != time.Minute {
		t.Fatalf("attempt %d: wait %v, want 1m", failureLimit+1, wait)
	}
	// Blocked: further attempts are refused with what is left, and do not extend it.
	now = now.Add(20 * time.Second)
	if wait := l.acquire(key, now); wait != 40*time.Second {
		t.Fatalf("wait %v, want 40s", wait)
	}
	// Each repeat doubles the block, up to 15 minutes.
	for _, want := range []time.Duration{2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 15 * time.Minute, 15 * time.Minute} {
		now = now.Add(l.acquire(key, now)) // to the end of the current block
		spend(failureLimit)
		if wait := l.acquire(key, now); wait != want {
			t.Fatalf("wait %v, want %v", wait, want)
		}
	}
	// Quiet for longer than the longest block: forgotten, the next block is 1m again.
	now = now.Add(15*time.Minute + failureMaxBlock + time.Second)
	spend(failureLimit)
	if wait := l.acquire(key, now); wait != time.Minute {
		t.Fatalf("after a quiet spell: wait %v, want 1m", wait)
	}
	// A window that passes without reaching the limit starts over.
	other := netip.MustParseAddr("192.0.2.8")
	for range 3 {
		for range failureLimit {
			if l.acquire(other, now) != 0 {
				t.Fatal("refused within the limit")
			}
		}
		now = now.Add(failureWindow)
	}
}

func TestFailureLimiterRefundsSuccesses(t *testing.T) {
	l := newFailureLimiter()
	key := netip.MustParseAddr("2001:db8::1")
	now := time.Unix(1_700_000_000, 0)
	for i := range 10 * failureLimit {
		if wait := l.acquire(key, now); wait != 0 {
			t.Fatalf("attempt %d refused although every one succeeded", i)
		}
		l.refund(key)
	}
}

func TestFailureLimiterBounded(t *testing.T) {
	l := newFailureLimiter()
	now := time.Unix(1_700_000_000, 0)
	first := netip.AddrFrom4([4]byte{10, 0, 0, 0})
	for range failureLimit {
		l.acquire(first, now)
	}
	for i := range failureMaxClients + 500 {
		l.acquire(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), now)
	}
	if n := l.size(); n != failureMaxClients {
		t.Fatalf("%d entries, want the cap %d", n, failureMaxClients)
	}
	// The least recently touched went first.
	if _, ok := l.entries[first]; ok {
		t.Error("the oldest entry was kept")
	}
}

// limitedCtx is a request from addr carrying Authorization authz (none if empty).
func limitedCtx(uri, addr, authz string) *fasthttp.RequestCtx {
	ctx := authRequest("GET", uri, "regcache.lan")
	if authz != "" {
		ctx.Request.Header.Set("Authorization", authz)
	}
	ctx.SetRemoteAddr(&net.TCPAddr{IP: net.ParseIP(addr), Port: 40000})
	return ctx
}

func TestFailedAuthLimited(t *testing.T) {
	a, now := newTestAuth(t, ClientAuthOptions{
		Users:  map[string]string{"alice": bcryptHash(t, "alice-pw")},
		Tokens: []string{"static-token-1"},
		Secret: []byte("k-0123456789abcdef0123456789abcdef"),
	})
	const path = "/v2/library/nginx/manifests/latest"
	const attacker = "198.51.100.9"
	issued, _ := a.issueToken("alice")
	rememberedRight := basicHeader("alice", "alice-pw")
	remembered := []string{rememberedRight, "Bearer " + issued, "Bearer static-token-1", basicHeader("ci", "static-token-1")}
	for _, h := range remembered {
		if !a.authorize(limitedCtx(path, "203.0.113.1", h), []byte(path)) {
			t.Fatalf("%.24q refused", h)
		}
	}
	status := func(addr, authz string) (int, *fasthttp.RequestCtx) {
		t.Helper()
		ctx := limitedCtx(path, addr, authz)
		a.authorize(ctx, []byte(path))
		return ctx.Response.StatusCode(), ctx
	}
	for i := range failureLimit {
		if code, _ := status(attacker, basicHeader("alice", fmt.Sprintf("guess-%d", i))); code != 401 {
			t.Fatalf("failure %d: status %d, want 401", i+1, code)
		}
	}
	// Unknown users cost a (dummy) comparison too, and count alike.
	code, ctx := status(attacker, basicHeader("mallory", "x"))
	if code != fasthttp.StatusTooManyRequests {
		t.Fatalf("failure %d: status %d, want 429", failureLimit+1, code)
	}
	if ra := string(ctx.Response.Header.Peek("Retry-After")); ra != "60" {
		t.Errorf("Retry-After %q, want 60", ra)
	}
	var body errorBody
	if err := json.Unmarshal(ctx.Response.Body(), &body); err != nil || len(body.Errors) != 1 || body.Errors[0].Code != "TOOMANYREQUESTS" {
		t.Errorf("body %s, want one TOOMANYREQUESTS error", ctx.Response.Body())
	}
	// While blocked, even the right password is refused from there (it would cost a
	// comparison)...
	unremembered := "basic " + basicHeader("alice", "alice-pw")[len("Basic "):] // another header, same credentials
	if code, _ := status(attacker, unremembered); code != 429 {
		t.Errorf("right, unremembered password while blocked: %d, want 429", code)
	}
	// ...but nothing that needs no check: credentials remembered from the last minute, the
	// bare challenge, malformed headers.
	for _, h := range remembered {
		if code, _ := status(attacker, h); code != 200 {
			t.Errorf("%.24q while blocked: %d, want 200 (remembered)", h, code)
		}
	}
	for _, h := range []string{"", "Bearer", "Basic !!!"} {
		if code, _ := status(attacker, h); code != 401 {
			t.Errorf("%q while blocked: %d, want 401", h, code)
		}
	}
	// Other clients are not affected; the attacker's neighbours in its IPv6 /64 would be.
	if code, _ := status("198.51.100.10", basicHeader("alice", "wrong")); code != 401 {
		t.Errorf("another address: %d, want 401", code)
	}
	for i := range failureLimit {
		status(fmt.Sprintf("2001:db8:1:2::%x", i+1), basicHeader("alice", "wrong"))
	}
	if code, _ := status("2001:db8:1:2:ffff::1", basicHeader("alice", "wrong")); code != 429 {
		t.Errorf("same IPv6 /64: %d, want 429", code)
	}
	if code, _ := status("2001:db8:1:3::1", basicHeader("alice", "wrong")); code != 401 {
		t.Errorf("another IPv6 /64: %d, want 401", code)
	}
	// The token endpoint is rationed by the same table.
	tctx := limitedCtx("/token", attacker, basicHeader("alice", "guess"))
	a.serveToken(tctx)
	if tctx.Response.StatusCode() != 429 || len(tctx.Response.Header.Peek("Retry-After")) == 0 {
		t.Errorf("/token while blocked: %d, Retry-After %q", tctx.Response.StatusCode(), tctx.Response.Header.Peek("Retry-After"))
	}
	// After the block, guesses are answered 401 again (the next block would be longer).
	*now = now.Add(time.Minute)
	if code, _ := status(attacker, basicHeader("alice", "wrong")); code != 401 {
		t.Errorf("after the block: %d, want 401", code)
	}
	if code, _ := status(attacker, unremembered); code != 200 {
		t.Errorf("right password after the block: %d, want 200", code)
	}
}

// TestFailedAuthLimitedConcurrently: guesses sent at once cannot race past the limit,
// because an attempt is counted before its comparison runs.
func TestFailedAuthLimitedConcurrently(t *testing.T) {
	a, _ := newTestAuth(t, ClientAuthOptions{Users: map[string]string{"alice": bcryptHash(t, "alice-pw")}})
	const n = 60
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx := limitedCtx("/v2/", "198.51.100.20", basicHeader("alice", fmt.Sprint("guess-", i)))
			a.authorize(ctx, []byte("/v2/"))
			mu.Lock()
			codes[ctx.Response.StatusCode()]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if codes[401] != failureLimit || codes[429] != n-failureLimit {
		t.Fatalf("statuses %v, want %d×401 and %d×429", codes, failureLimit, n-failureLimit)
	}
}

// TestFailedAuthForwardedFor: behind a proxy that sets X-Forwarded-For (and with
// trust_forwarded_headers), clients are told apart by the address it appended last.
func TestFailedAuthForwardedFor(t *testing.T) {
	a, _ := newTestAuth(t, ClientAuthOptions{Users: map[string]string{"alice": bcryptHash(t, "alice-pw")}, TrustForwardedHeaders: true})
	const proxyAddr = "10.0.0.2"
	for i := range failureLimit {
		ctx := limitedCtx("/v2/", proxyAddr, basicHeader("alice", fmt.Sprint("guess-", i)))
		ctx.Request.Header.Set("X-Forwarded-For", "1.2.3.4, 198.51.100.30")
		a.authorize(ctx, []byte("/v2/"))
	}
	blocked := limitedCtx("/v2/", proxyAddr, basicHeader("alice", "again"))
	blocked.Request.Header.Set("X-Forwarded-For", "5.6.7.8,198.51.100.30")
	a.authorize(blocked, []byte("/v2/"))
	if blocked.Response.StatusCode() != 429 {
		t.Errorf("same forwarded client (spoofed first hop): %d, want 429", blocked.Response.StatusCode())
	}
	other := limitedCtx("/v2/", proxyAddr, basicHeader("alice", "again"))
	other.Request.Header.Set("X-Forwarded-For", "198.51.100.31")
	a.authorize(other, []byte("/v2/"))
	if other.Response.StatusCode() != 401 {
		t.Errorf("another forwarded client through the same proxy: %d, want 401", other.Response.StatusCode())
	}
}

// limitedStatus is the status authorize answers a request from addr with authz.
func limitedStatus(a *ClientAuth, addr, authz string) (int, *fasthttp.RequestCtx) {
	const path = "/v2/library/nginx/manifests/latest"
	ctx := limitedCtx(path, addr, authz)
	if a.authorize(ctx, []byte(path)) {
		ctx.SetStatusCode(fasthttp.StatusOK)
	}
	return ctx.Response.StatusCode(), ctx
}

// TestFailedBearerTokensLimited: wrong Bearer tokens cost no bcrypt but are guesses all the
// same, so they count toward the failure limit as failed logins do; once an address is
// blocked no token from it is checked (a right one would otherwise tell itself apart).
func TestFailedBearerTokensLimited(t *testing.T) {
	const static = "static-token-0123456789"
	a, now := newTestAuth(t, ClientAuthOptions{
		Users:  map[string]string{"alice": bcryptHash(t, "alice-pw")},
		Tokens: []string{static},
		Secret: []byte("k-0123456789abcdef0123456789abcdef"),
	})
	const attacker = "198.51.100.40"
	for i := range failureLimit {
		if code, _ := limitedStatus(a, attacker, fmt.Sprint("Bearer guess-", i)); code != 401 {
			t.Fatalf("wrong token %d: %d, want 401", i+1, code)
		}
	}
	code, ctx := limitedStatus(a, attacker, "Bearer guess-x")
	if code != fasthttp.StatusTooManyRequests || string(ctx.Response.Header.Peek("Retry-After")) != "60" {
		t.Fatalf("wrong token %d: %d, Retry-After %q; want 429 after 60", failureLimit+1, code, ctx.Response.Header.Peek("Retry-After"))
	}
	// Blocked: the right token is not even checked from there...
	issued, _ := a.issueToken("alice")
	for _, h := range []string{"Bearer " + static, "Bearer " + issued} {
		if code, _ := limitedStatus(a, attacker, h); code != 429 {
			t.Errorf("%.20q... from the blocked address: %d, want 429 unchecked", h, code)
		}
	}
	// ...unless it is remembered, having verified in the last minute (from anywhere).
	for _, h := range []string{"Bearer " + static, "Bearer " + issued} {
		if code, _ := limitedStatus(a, "203.0.113.5", h); code != 200 {
			t.Fatalf("%.20q... from another address: %d, want 200", h, code)
		}
		if code, _ := limitedStatus(a, attacker, h); code != 200 {
			t.Errorf("remembered %.20q... from the blocked address: %d, want 200", h, code)
		}
	}

	// An expired token this replica signed is no guess: clients send one at each expiry.
	stale, _ := a.issueToken("alice")
	*now = now.Add(DefaultTokenTTL + time.Second)
	for i := range 3 * failureLimit {
		if code, _ := limitedStatus(a, "203.0.113.6", "Bearer "+stale); code != 401 {
			t.Fatalf("expired token %d: %d, want 401 (not counted)", i+1, code)
		}
	}

	// Tokens signed with another key (this replica restarted without auth.secret, or
	// another replica issued them) are no guesses either: no one can forge an HMAC, and
	// counting them would block every client behind one address after a restart.
	before, _ := newTestAuth(t, ClientAuthOptions{Users: map[string]string{"alice": bcryptHash(t, "alice-pw")}, Secret: []byte("another-key-0123456789abcdef0123456789")})
	foreign, _ := before.issueToken("alice")
	for i := range 3 * failureLimit {
		if code, _ := limitedStatus(a, "203.0.113.7", "Bearer "+foreign); code != 401 {
			t.Fatalf("token signed with another key %d: %d, want 401 (not counted)", i+1, code)
		}
	}
	if code, _ := limitedStatus(a, "203.0.113.7", basicHeader("alice", "alice-pw")); code != 200 {
		t.Errorf("the right password after old tokens from one address: %d, want 200", code)
	}

	// With static tokens only there is no bcrypt at all; a Basic password guessing at one
	// counts the same.
	tokensOnly, _ := newTestAuth(t, ClientAuthOptions{Tokens: []string{static}})
	for i := range failureLimit {
		if code, _ := limitedStatus(tokensOnly, attacker, basicHeader("ci", fmt.Sprint("guess-", i))); code != 401 {
			t.Fatalf("Basic guess %d: %d, want 401", i+1, code)
		}
	}
	if code, _ := limitedStatus(tokensOnly, attacker, basicHeader("ci", "guess-x")); code != 429 {
		t.Errorf("Basic guess %d with tokens only: %d, want 429", failureLimit+1, code)
	}
}

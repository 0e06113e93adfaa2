package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"regcache/cache/redistest"
	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// replica is one regcache's cache and upstream client, sharing a Redis with the others.
type replica struct {
	c *Cache
	o *Origin
}

func newReplica(t *testing.T, reg *registrytest.Registry, addr string, lockTTL time.Duration) *replica {
	t.Helper()
	r, err := upstream.New(upstream.Options{Name: "reg.test", URL: reg.URL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{MaxSize: 8 << 20, MaxStale: time.Hour, NegativeTTL: time.Minute, RevalidateWait: time.Second,
		Redis: &RedisConfig{Addr: addr, KeyPrefix: "rc-test:", LockTTL: lockTTL}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); r.Close() })
	return &replica{c: c, o: &Origin{Registry: r, TagTTL: time.Minute}}
}

func (rp *replica) get(t *testing.T, ref string, body bool) Answer {
	t.Helper()
	a, err := rp.c.Manifest(context.Background(), rp.o, "team/app", ref, body)
	if err != nil {
		t.Fatalf("%s: %v", ref, err)
	}
	return a
}

// burst sends n HEAD lookups of ref at once, spread over reps, and checks that every one
// answers, naming want when it is not "".
func burst(t *testing.T, reps []*replica, n int, ref, want string) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rp := reps[i%len(reps)]
			a, err := rp.c.Manifest(context.Background(), rp.o, "team/app", ref, false)
			if err != nil || (want != "" && string(a.Digest) != want) {
				t.Errorf("replica %d: %s %v, want %s", i%len(reps), a.Digest, err, want)
			}
		}()
	}
	wg.Wait()
}

func manifests(reg *registrytest.Registry) int {
	return reg.Count("GET", "manifest") + reg.Count("HEAD", "manifest")
}

// TestSharedTierServesTheFleet: what one replica fetched, another serves without asking
// upstream, with the same fetch time (so both agree on freshness), a body verified on the
// way out of Redis, and the tag's previous target carried along.
func TestSharedTierServesTheFleet(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.Bearer)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	reg.PushImage(t, "team/app", "v2", types.DockerManifestSchema2)
	a, b := newReplica(t, reg, rs.Addr, time.Second), newReplica(t, reg, rs.Addr, time.Second)

	first := a.get(t, "v1", true)
	if n := manifests(reg); n != 1 || first.Status != Miss {
		t.Fatalf("replica a: %d manifest requests, status %v; want 1, MISS", n, first.Status)
	}
	got := b.get(t, "v1", true)
	if n := manifests(reg); n != 1 {
		t.Fatalf("replica b asked upstream: %d manifest requests in all, want 1", n)
	}
	if !bytes.Equal(got.Body, img.Body) || string(got.Digest) != img.Digest || got.MediaType != img.MediaType {
		t.Fatalf("replica b served %s %s (%d bytes), want %s %s", got.Digest, got.MediaType, len(got.Body), img.Digest, img.MediaType)
	}
	if !got.FetchedAt.Equal(first.FetchedAt) {
		t.Fatalf("replica b's fetch time %v differs from a's %v: the fleet would disagree on freshness", got.FetchedAt, first.FetchedAt)
	}
	// Now a first-tier hit on b.
	if h := b.get(t, "v1", false); h.Status != Hit {
		t.Fatalf("second look on b: %v, want HIT", h.Status)
	}

	// A HEAD-only entry (no body) is shared too: b's HEAD costs nothing.
	a.get(t, "v2", false)
	before := manifests(reg)
	if h := b.get(t, "v2", false); manifests(reg) != before || h.Digest == "" {
		t.Fatalf("b's HEAD of v2 asked upstream (%d -> %d)", before, manifests(reg))
	}

	st := b.c.RedisStats()
	if st == nil || !st.Up || st.Hits < 2 || st.Garbage != 0 {
		t.Fatalf("redis stats on b: %+v", st)
	}
}

// TestFleetCoalescing: replicas that miss the same tag at once ask upstream once between
// them; the others wait for the shared answer.
func TestFleetCoalescing(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	for i := range 5 {
		reg.PushImage(t, "team/app", fmt.Sprintf("t%d", i), types.OCIManifestSchema1)
	}
	reg.SetFault(registrytest.OnManifests(registrytest.Delay(150 * time.Millisecond)))
	var reps []*replica
	for range 3 {
		reps = append(reps, newReplica(t, reg, rs.Addr, 3*time.Second))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 60)
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rp := reps[i%3]
			if _, err := rp.c.Manifest(context.Background(), rp.o, "team/app", fmt.Sprintf("t%d", i%5), i%2 == 0); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// 5 tags: one request each by tag; a replica whose first caller wanted only the
	// descriptor may add one GET by digest for a body, shared again through Redis.
	total := manifests(reg)
	if total > 10 {
		t.Fatalf("%d manifest requests for 5 tags across 3 replicas, want at most 10 (5 by tag, 5 by digest)", total)
	}
	var waits int64
	for _, rp := range reps {
		waits += rp.c.RedisStats().LockWaits
	}
	if waits == 0 {
		t.Fatal("no replica waited on another's lock: the fleet did not coalesce")
	}
	t.Logf("60 clients, 3 replicas, 5 tags: %d upstream manifest requests, %d lock waits", total, waits)
}

// TestFleetHolderDies: a lock whose holder never answers (it died) holds the others back
// only until it expires; then they ask upstream themselves. A lock released without an
// answer (upstream failed for the holder) lets them go at once.
func TestFleetHolderDies(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	reg.PushImage(t, "team/app", "v2", types.OCIManifestSchema1)
	rp := newReplica(t, reg, rs.Addr, 5*time.Second)

	// A dead holder's lock, with 400 ms left to live.
	if _, err := rs.Do("SET", "rc-test:lock:tag:reg.test/team/app:v1", "someone-else", "PX", "400"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	a := rp.get(t, "v1", false)
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("answered after %v: the other replica's lock was not respected", took)
	}
	if a.Digest == "" || manifests(reg) != 1 {
		t.Fatalf("after the lock expired: digest %q, %d upstream requests; want 1", a.Digest, manifests(reg))
	}

	// A holder that gives up: the lock goes away without an answer after 100 ms.
	if _, err := rs.Do("SET", "rc-test:lock:tag:reg.test/team/app:v2", "someone-else", "PX", "5000"); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		_, _ = rs.Do("DEL", "rc-test:lock:tag:reg.test/team/app:v2")
	}()
	start = time.Now()
	if a := rp.get(t, "v2", false); a.Digest == "" {
		t.Fatal("no answer for v2")
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Fatalf("waited %v after the lock was released, want about 100 ms", took)
	}
	if st := rp.c.RedisStats(); st.LockWaits != 2 {
		t.Fatalf("lock waits %d, want 2", st.LockWaits)
	}
}

// TestSharedTierRefusesGarbage: entries in Redis that do not decode, carry a bad media
// type, or whose body does not match the digest in their key are refused, deleted and
// counted; the replica asks upstream and serves the right manifest.
func TestSharedTierRefusesGarbage(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	other := reg.PushImage(t, "team/app", "other", types.OCIManifestSchema1)
	rp := newReplica(t, reg, rs.Addr, time.Second)
	d := digest.Digest(img.Digest)
	now := time.Now().UnixNano()
	tagKey := "rc-test:tag:reg.test/team/app:v1"
	manKey := "rc-test:manifest:reg.test/team/app@" + img.Digest

	for _, tc := range []struct {
		name, key, value string
	}{
		{"tag entry fetched 100 years from now", tagKey, fmt.Sprintf(`{"digest":%q,"mediaType":%q,"size":%d,"fetchedAt":%d}`, img.Digest, img.MediaType, len(img.Body), time.Now().AddDate(100, 0, 0).UnixNano())},
		{"tag key of another Redis type", tagKey, "LIST"},
		{"manifest key of another Redis type", manKey, "LIST"},
		{"manifest whose body names another media type", manKey, "v1\n" + upstream.MediaTypeDockerManifest + "\n" + string(img.Body)},
		{"manifest body that is a JSON number", manKey, "v1\n" + img.MediaType + "\n123"},
		{"tag entry not JSON", tagKey, "{nope"},
		{"tag entry with a bad digest", tagKey, fmt.Sprintf(`{"digest":"sha256:zz","mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"fetchedAt":%d}`, now)},
		{"tag entry with a header-splitting media type", tagKey, fmt.Sprintf(`{"digest":%q,"mediaType":"text/html\r\nX-Evil: 1","size":1,"fetchedAt":%d}`, img.Digest, now)},
		{"manifest entry without its header", manKey, string(img.Body)},
		{"manifest body of another digest", manKey, "v1\n" + img.MediaType + "\n" + string(other.Body)},
		{"manifest body altered by one byte", manKey, "v1\n" + img.MediaType + "\n" + strings.Replace(string(img.Body), "sha256", "sha257", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rp.c.store.rc.Clear()
			if _, err := rs.Do("FLUSHALL"); err != nil {
				t.Fatal(err)
			}
			if tc.key == manKey {
				// A sound tag entry that leads to the bad body.
				tagEntry := fmt.Sprintf(`{"digest":%q,"mediaType":%q,"size":%d,"fetchedAt":%d}`, img.Digest, img.MediaType, len(img.Body), now)
				if _, err := rs.Do("SET", tagKey, tagEntry); err != nil {
					t.Fatal(err)
				}
			}
			plant := []string{"SET", tc.key, tc.value}
			if tc.value == "LIST" {
				plant = []string{"RPUSH", tc.key, "x"}
			}
			if _, err := rs.Do(plant...); err != nil {
				t.Fatal(err)
			}
			garbage := rp.c.RedisStats().Garbage
			a := rp.get(t, "v1", true)
			if a.Digest != d || !bytes.Equal(a.Body, img.Body) || a.MediaType != img.MediaType {
				t.Fatalf("served %s %q (%d bytes), want the real v1", a.Digest, a.MediaType, len(a.Body))
			}
			if got := rp.c.RedisStats().Garbage; got != garbage+1 {
				t.Fatalf("garbage count %d -> %d, want one more", garbage, got)
			}
			if typ, err := rs.Do("TYPE", tc.key); err != nil || typ == "+list" {
				t.Fatalf("the bad entry is still in Redis (%s, %v)", typ, err)
			}
			if v, err := rs.Do("GET", tc.key); err != nil || v == tc.value {
				t.Fatalf("the bad entry is still in Redis (%v)", err)
			}
		})
	}
}

// TestSharedTierDown: with Redis gone (killed, a black hole that never answers, or a peer
// speaking another protocol) every request is still answered from memory and upstream,
// Redis shows as down with a reason, and when Redis comes back the replica uses it again
// by itself.
func TestSharedTierDown(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	for i := range 20 {
		reg.PushImage(t, "team/app", fmt.Sprintf("t%d", i), types.OCIManifestSchema1)
	}
	rp := newReplica(t, reg, rs.Addr, time.Second)
	rp.get(t, "t0", true)
	rs.Kill()
	for i := range 10 {
		if a := rp.get(t, fmt.Sprintf("t%d", i), true); a.Body == nil {
			t.Fatalf("t%d: no body with Redis down", i)
		}
	}
	st := rp.c.RedisStats()
	if st.Up || st.Errors == 0 || st.LastError == "" || st.DownSince.IsZero() {
		t.Fatalf("with Redis killed: %+v; want down, with errors and a reason", st)
	}
	// Hits never touch Redis.
	errs := st.Errors
	for range 100 {
		if a := rp.get(t, "t0", false); a.Status != Hit {
			t.Fatalf("t0 with Redis down: %v, want HIT", a.Status)
		}
	}
	if got := rp.c.RedisStats().Errors; got != errs {
		t.Fatalf("first-tier hits called Redis: errors %d -> %d", errs, got)
	}

	rs.Start()
	deadline := time.Now().Add(10 * time.Second)
	for !rp.c.RedisStats().Up {
		if time.Now().After(deadline) {
			t.Fatal("Redis is back but the replica did not notice within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	rp.get(t, "t10", true)
	if v, err := rs.Do("EXISTS", "rc-test:tag:reg.test/team/app:t10"); err != nil || v != ":1" {
		t.Fatalf("after Redis came back, t10 was not shared: %q %v", v, err)
	}

	for name, serve := range map[string]func(net.Conn){
		"black hole":     func(c net.Conn) { _, _ = io.Copy(io.Discard, c); c.Close() },
		"wrong protocol": func(c net.Conn) { _, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n")); c.Close() },
	} {
		t.Run(name, func(t *testing.T) {
			addr := fakeServer(t, serve)
			rp := newReplica(t, reg, addr, time.Second)
			start := time.Now()
			for i := range 20 {
				if a := rp.get(t, fmt.Sprintf("t%d", i), true); a.Body == nil {
					t.Fatalf("t%d: no body", i)
				}
			}
			st := rp.c.RedisStats()
			if st.Up || st.Errors == 0 {
				t.Fatalf("stats %+v, want down with errors", st)
			}
			// Down, Redis is tried once a second, not once per request: 20 misses cost a
			// handful of failed calls, not 20 or more.
			if st.Errors > 8 {
				t.Fatalf("%d failed Redis calls for 20 misses in %v: the replica kept waiting on a dead Redis", st.Errors, time.Since(start))
			}
			t.Logf("%s: 20 misses in %v, %d failed Redis calls", name, time.Since(start), st.Errors)
		})
	}
}

// fakeServer listens on loopback and hands each connection to serve.
func fakeServer(t *testing.T, serve func(net.Conn)) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); serve(c) }()
		}
	}()
	return l.Addr().String()
}

// TestSharedTagDescriptorFromVerifiedBody: a tag entry in Redis whose type and size lie
// is answered with what the verified body says, on HEAD and GET alike.
func TestSharedTagDescriptorFromVerifiedBody(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rp := newReplica(t, reg, rs.Addr, time.Second)
	lie := fmt.Sprintf(`{"digest":%q,"mediaType":%q,"size":12345,"fetchedAt":%d}`, img.Digest, upstream.MediaTypeDockerList, time.Now().UnixNano())
	if _, err := rs.Do("SET", "rc-test:tag:reg.test/team/app:v1", lie); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Do("SET", "rc-test:manifest:reg.test/team/app@"+img.Digest, "v1\n"+img.MediaType+"\n"+string(img.Body)); err != nil {
		t.Fatal(err)
	}
	for i, body := range []bool{false, true, true, false} {
		a := rp.get(t, "v1", body)
		if a.MediaType != img.MediaType || a.Size != int64(len(img.Body)) {
			t.Fatalf("answer %d (body %v): %s, %d bytes; want the verified %s, %d", i, body, a.MediaType, a.Size, img.MediaType, len(img.Body))
		}
	}
	if n := manifests(reg); n != 0 {
		t.Fatalf("%d upstream requests (GET %d, HEAD %d), want 0 (all of it was in Redis)", n, reg.Count("GET", "manifest"), reg.Count("HEAD", "manifest"))
	}
}

// TestFleetSlowUpstreamKeepsLock: an upstream slower than the lock's lifetime does not
// break coalescing: the holder renews its lock while it waits.
func TestFleetSlowUpstreamKeepsLock(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	// The lock lives 1.5 s unless renewed (every 0.5 s), the upstream takes 3 s: only the
	// renewals keep the others waiting. A renewal may come late by ~0.5 s on a loaded
	// machine before a waiter takes the lock over.
	reg.SetFault(registrytest.OnManifests(registrytest.Delay(3 * time.Second)))
	var reps []*replica
	for range 3 {
		reps = append(reps, newReplica(t, reg, rs.Addr, 1500*time.Millisecond))
	}
	burst(t, reps, 9, "v1", "")
	if n := manifests(reg); n != 1 {
		t.Fatalf("%d upstream requests from 3 replicas for one tag behind a 3 s upstream and a 1.5 s lock, want 1", n)
	}
}

// TestFleetSharesFailures: when the replica that asked gets an upstream error, the replicas
// that waited answer with it instead of asking again; a tag upstream says is gone leaves
// Redis too.
func TestFleetSharesFailures(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	reg.SetFault(registrytest.OnManifests(registrytest.Chain(registrytest.Delay(200*time.Millisecond), registrytest.RateLimited(30*time.Second))))
	var reps []*replica
	for range 3 {
		reps = append(reps, newReplica(t, reg, rs.Addr, 5*time.Second))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rp := reps[i%3]
			_, err := rp.c.Manifest(context.Background(), rp.o, "team/app", "v1", false)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, upstream.ErrRateLimited) {
			t.Fatalf("a client got %v, want the upstream's 429", err)
		}
	}
	if n := manifests(reg); n != 1 {
		t.Fatalf("%d upstream requests for one rate-limited tag across 3 replicas, want 1", n)
	}

	// A stale shared entry for a tag upstream no longer has: the 404 removes it from Redis.
	reg.SetFault(nil)
	stale := fmt.Sprintf(`{"digest":"sha256:%064x","mediaType":%q,"size":10,"fetchedAt":%d}`, 1, upstream.MediaTypeOCIManifest, time.Now().Add(-time.Hour).UnixNano())
	if _, err := rs.Do("SET", "rc-test:tag:reg.test/team/app:gone", stale); err != nil {
		t.Fatal(err)
	}
	fresh := newReplica(t, reg, rs.Addr, time.Second) // the one that got the 429 holds back for 30 s
	if _, err := fresh.c.Manifest(context.Background(), fresh.o, "team/app", "gone", false); !errors.Is(err, upstream.ErrNotFound) {
		t.Fatalf("gone: %v, want not found", err)
	}
	if v, _ := rs.Do("EXISTS", "rc-test:tag:reg.test/team/app:gone"); v != ":0" {
		t.Fatalf("the gone tag is still in Redis (%s)", v)
	}
}

// TestSharedTagKeepsPrevious: a replica that never saw a tag still records where it
// pointed before it moved, from the shared entry, so every replica can fall back to it.
func TestSharedTagKeepsPrevious(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	old := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	a := newReplica(t, reg, rs.Addr, time.Second)
	a.get(t, "v1", true)
	// The entry goes stale, and the tag moves upstream.
	key := "rc-test:tag:reg.test/team/app:v1"
	entry := fmt.Sprintf(`{"digest":%q,"mediaType":%q,"size":%d,"fetchedAt":%d}`, old.Digest, old.MediaType, len(old.Body), time.Now().Add(-time.Hour).UnixNano())
	if _, err := rs.Do("SET", key, entry); err != nil {
		t.Fatal(err)
	}
	moved := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	b := newReplica(t, reg, rs.Addr, time.Second)
	if got := b.get(t, "v1", false); string(got.Digest) != moved.Digest {
		t.Fatalf("b resolved %s, want the moved %s", got.Digest, moved.Digest)
	}
	v, err := rs.Do("GET", key)
	if err != nil || !strings.Contains(v, `"prevDigest":"`+old.Digest+`"`) {
		t.Fatalf("shared entry after the move: %s (%v); want prevDigest %s", v, err, old.Digest)
	}
}

// TestFirstTierHitsNeverCallRedis counts the commands Redis processed while a replica
// answers 200 first-tier hits with Redis up.
func TestFirstTierHitsNeverCallRedis(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rp := newReplica(t, reg, rs.Addr, time.Second)
	rp.get(t, "v1", true)
	commands := func() int {
		info, err := rs.Do("INFO", "stats")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
		t.Fatalf("no total_commands_processed in %q", info)
		return 0
	}
	before := commands()
	for i := range 200 {
		if a := rp.get(t, "v1", i%2 == 0); a.Status != Hit {
			t.Fatalf("hit %d: %v", i, a.Status)
		}
	}
	// The INFO itself counts one; the replica's background ping (every 2 s) may add one.
	if n := commands() - before; n > 2 {
		t.Fatalf("200 first-tier hits cost %d Redis commands", n-1)
	}
}

// TestLockOnlyReleasesItsOwn: a holder whose lock expired (and was taken by another
// replica) must not delete the other replica's lock when it finally lets go.
func TestLockOnlyReleasesItsOwn(t *testing.T) {
	rs := redistest.Start(t)
	s1 := newShared(RedisConfig{Addr: rs.Addr, KeyPrefix: "rc-test:", LockTTL: 500 * time.Millisecond}, zap.NewNop())
	s2 := newShared(RedisConfig{Addr: rs.Addr, KeyPrefix: "rc-test:", LockTTL: 10 * time.Second}, zap.NewNop())
	defer s1.close()
	defer s2.close()
	release1, mine := s1.lock("k")
	if !mine {
		t.Fatal("s1 did not get the free lock")
	}
	// s1's renewal keeps it past its lifetime: s2 cannot take it.
	time.Sleep(1200 * time.Millisecond)
	if _, mine := s2.lock("k"); mine {
		t.Fatal("s2 took a lock s1 holds and renews")
	}
	// s1 stalls without renewing (its renewals are stopped here by deleting its key as
	// expiry would), s2 takes the lock, then s1 lets go.
	if _, err := rs.Do("DEL", "rc-test:lock:k"); err != nil {
		t.Fatal(err)
	}
	release2, mine := s2.lock("k")
	if !mine {
		t.Fatal("s2 did not get the lock after s1's expired")
	}
	release1()
	if _, held := s1.holder("k"); !held {
		t.Fatal("s1's release deleted s2's lock")
	}
	release2()
	if _, held := s1.holder("k"); held {
		t.Fatal("s2's release left its lock behind")
	}
}

// TestSharedTagsPages: tags listings are shared too. Replicas asking for the same listing
// at once ask upstream once between them; a new replica answers from Redis; a listing in
// Redis for another repository, with a tag the grammar forbids, out of order, or with a
// continuation that contradicts it, is refused.
func TestSharedTagsPages(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	var want []string
	for i := range 250 {
		want = append(want, fmt.Sprintf("v%03d", i))
	}
	reg.PushTags(t, "team/app", want)
	reg.SetFault(registrytest.Delay(100 * time.Millisecond))
	var reps []*replica
	for range 3 {
		reps = append(reps, newReplica(t, reg, rs.Addr, 5*time.Second))
	}
	req := TagsRequest{N: MaxTagsPage}
	var wg sync.WaitGroup
	bodies := make([][]byte, 30)
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rp := reps[i%3]
			p, _, err := rp.c.Tags(context.Background(), rp.o, "team/app", req, time.Now())
			if err != nil {
				t.Error(err)
				return
			}
			bodies[i] = p.Body
		}()
	}
	wg.Wait()
	reg.SetFault(nil)
	if n := reg.Count("GET", "tags"); n != 1 {
		t.Fatalf("%d upstream tags requests for one listing across 3 replicas, want 1", n)
	}
	for i, b := range bodies {
		if !bytes.Equal(b, bodies[0]) || !strings.Contains(string(b), `"v249"`) {
			t.Fatalf("client %d got %.100s", i, b)
		}
	}
	fresh := newReplica(t, reg, rs.Addr, time.Second)
	if p, _, err := fresh.c.Tags(context.Background(), fresh.o, "team/app", TagsRequest{N: 10, Last: "v100"}, time.Now()); err != nil ||
		!strings.Contains(string(p.Body), `["v101","v102"`) || !p.More || p.NextLast != "v110" {
		t.Fatalf("a new replica: %v %.100s", err, p.Body)
	}
	if n := reg.Count("GET", "tags"); n != 1 {
		t.Fatalf("a new replica asked upstream for tags (%d requests in all)", n)
	}

	key := "rc-test:tags:reg.test/team/app"
	now := time.Now().UnixNano()
	for _, bad := range []string{
		fmt.Sprintf(`{"name":"team/other","tags":["v1"],"complete":true,"received":1,"fetchedAt":%d}`, now),
		fmt.Sprintf(`{"name":"team/app","tags":["v1","<script>"],"complete":true,"received":2,"fetchedAt":%d}`, now),
		fmt.Sprintf(`{"name":"team/app","tags":["v2","v1"],"complete":true,"received":2,"fetchedAt":%d}`, now),
		fmt.Sprintf(`{"name":"team/app","tags":["v1"],"complete":true,"received":1,"fetchedAt":%d}`, time.Now().AddDate(1, 0, 0).UnixNano()),
		fmt.Sprintf(`{"name":"team/app","tags":["v1"],"received":1,"fetchedAt":%d}`, now),
		fmt.Sprintf(`{"name":"team/app","tags":["v1"],"complete":true,"nextLast":"v1","received":1,"fetchedAt":%d}`, now),
		`{"name":"team/app","tags":"v1"}`,
	} {
		if _, err := rs.Do("SET", key, bad); err != nil {
			t.Fatal(err)
		}
		rp := newReplica(t, reg, rs.Addr, time.Second)
		garbage := rp.c.RedisStats().Garbage
		p, _, err := rp.c.Tags(context.Background(), rp.o, "team/app", req, time.Now())
		if err != nil || !bytes.Equal(p.Body, bodies[0]) {
			t.Fatalf("with %s in Redis: %v %.100s", bad, err, p.Body)
		}
		if rp.c.RedisStats().Garbage != garbage+1 {
			t.Fatalf("%s was not counted as garbage", bad)
		}
	}
}

// TestSharedTagsWalkAcrossReplicas: a client whose requests land on one replica after
// another, following Links through a listing longer than one request may read, costs
// upstream that one listing between the replicas: each goes on from the listing the
// fleet shares.
func TestSharedTagsWalkAcrossReplicas(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	want := numberedTags(300)
	reg.PushTags(t, "team/app", want)
	reg.SetPaging(registrytest.PagingLink, 10) // 30 upstream pages
	var reps []*replica
	for range 3 {
		rp := newReplica(t, reg, rs.Addr, 5*time.Second)
		rp.c.cfg.TagsMaxPages = 4
		reps = append(reps, rp)
	}
	i := 0
	got, worst := walkTags(t, func(r TagsRequest) TagsAnswer {
		rp := reps[i%3]
		i++
		p, _, err := rp.c.Tags(context.Background(), rp.o, "team/app", r, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return p
	}, reg, 25)
	sameTags(t, got, want)
	if n := reg.Count("GET", "tags"); n != 30 || worst > 4 {
		t.Fatalf("the walk cost %d upstream pages (at most %d per request), want 30 (at most 4)", n, worst)
	}
}

// TestFleetKeepsBusyToItself: a replica whose upstream concurrency bound is full, or whose
// breaker is open, says so to its own clients only. The waiters on its lock are not told
// "unavailable": their own bounds may have room and their breakers be closed, so they ask
// upstream themselves.
func TestFleetKeepsBusyToItself(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	a := newReplica(t, reg, rs.Addr, time.Second)
	busy := &upstream.Error{Kind: upstream.KindUnavailable, Upstream: "reg.test", Busy: true, RetryAfter: time.Second, Message: "busy"}
	fleet := a.c.fleet.(*shared)
	fleet.setFailure("k-busy", busy)
	if err := fleet.failure("k-busy"); err != nil {
		t.Fatalf("a full bound was shared with the fleet: %v", err)
	}
	open := &upstream.Error{Kind: upstream.KindUnavailable, Upstream: "reg.test", BreakerOpen: true, RetryAfter: time.Second, Message: "open"}
	fleet.setFailure("k-open", open)
	if err := fleet.failure("k-open"); err != nil {
		t.Fatalf("an open breaker was shared with the fleet: %v", err)
	}
	down := &upstream.Error{Kind: upstream.KindUnavailable, Upstream: "reg.test", Message: "connection refused"}
	fleet.setFailure("k-down", down)
	if err := fleet.failure("k-down"); !errors.Is(err, upstream.ErrUnavailable) {
		t.Fatalf("an upstream failure was not shared: %v", err)
	}
}

// A move one replica fetched and shared is recorded once for the fleet: the replica that
// later revalidates past the shared entry, still holding the old digest in its own memory,
// compares with the newer (shared) entry and records nothing.
func TestFleetMoveRecordedOnce(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	a, b := newReplica(t, reg, rs.Addr, time.Second), newReplica(t, reg, rs.Addr, time.Second)
	var mu sync.Mutex
	moves := map[string]int{}
	a.c.cfg.OnTagMove = func(TagMove) { mu.Lock(); moves["a"]++; mu.Unlock() }
	b.c.cfg.OnTagMove = func(TagMove) { mu.Lock(); moves["b"]++; mu.Unlock() }
	ttl := 300 * time.Millisecond
	a.o.TagTTL, b.o.TagTTL = ttl, ttl
	a.get(t, "v1", false) // a fetches the first digest
	b.get(t, "v1", false) // b reads it from Redis
	moved := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	time.Sleep(ttl + 50*time.Millisecond)
	if got := a.get(t, "v1", false); string(got.Digest) != moved.Digest {
		t.Fatalf("a: %s", got.Digest)
	}
	time.Sleep(ttl + 50*time.Millisecond) // the shared entry is stale too now; b still holds the first
	if got := b.get(t, "v1", false); string(got.Digest) != moved.Digest {
		t.Fatalf("b: %s", got.Digest)
	}
	mu.Lock()
	defer mu.Unlock()
	if moves["a"] != 1 || moves["b"] != 0 {
		t.Fatalf("moves recorded: a %d, b %d; want 1 and 0 (b learnt of the move from Redis)", moves["a"], moves["b"])
	}
}

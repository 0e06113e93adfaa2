package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"regcache/internal/feed"
)

// TestMain fails the package if a test leaves a sender or a connection's goroutine behind:
// Close must stop them all.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testEvent is the i-th test event: a tag.changed of reg.test/team/app:v1.
func testEvent(i int) feed.Event {
	return feed.Event{
		ID: fmt.Sprintf("1764695224123-%012d", i), Type: feed.TagChanged, Time: "2026-12-02T17:27:04Z",
		Image: "reg.test/team/app:v1", Registry: "reg.test", Repository: "team/app", Tag: "v1",
		Digest: digest.FromString(fmt.Sprint("new", i)).String(), PreviousDigest: digest.FromString(fmt.Sprint("old", i)).String(),
		MediaType: "application/vnd.oci.image.index.v1+json",
		Platforms: map[string]string{"linux/amd64": digest.FromString("amd64").String()},
	}
}

// received is one request a receiver got.
type received struct {
	Method, URI string
	Header      http.Header
	Body        []byte
	At          time.Time
}

// receiver is an HTTP receiver on 127.0.0.1 that records every request and answers the
// n-th (from 1) as answer says (200 when nil).
type receiver struct {
	*httptest.Server
	mu  sync.Mutex
	got []received
}

func newReceiver(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.got = append(rc.got, received{r.Method, r.RequestURI, r.Header.Clone(), body, time.Now()})
		n := len(rc.got)
		rc.mu.Unlock()
		if answer != nil {
			answer(n, w, r)
		}
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.got...)
}

// start builds a dispatcher, closed when the test ends.
func start(t *testing.T, o Options, cfgs ...Config) *Dispatcher {
	t.Helper()
	d, err := New(cfgs, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(context.Background()) })
	return d
}

// waitFor polls cond until it holds, for at most 15 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// verifySignature checks X-Regcache-Signature as a receiver does: the HMAC of the bytes it
// got, compared in constant time.
func verifySignature(t *testing.T, secret string, r received) {
	t.Helper()
	sig, ok := strings.CutPrefix(r.Header.Get(HeaderSignature), "sha256=")
	got, err := hex.DecodeString(sig)
	if !ok || err != nil {
		t.Fatalf("signature header %q is not sha256=<hex>", r.Header.Get(HeaderSignature))
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(r.Body)
	if !hmac.Equal(got, m.Sum(nil)) {
		t.Fatalf("signature %q does not verify over the body %q", sig, r.Body)
	}
}

func TestFormatRegcache(t *testing.T) {
	rc := newReceiver(t, nil)
	d := start(t, Options{}, Config{Name: "ci", URL: rc.URL + "/hooks/regcache", Secret: "s3cret-key",
		Headers: map[string]string{"Authorization": "Bearer tok-123"}})
	e := testEvent(1)
	d.Deliver(e)
	waitFor(t, "delivery", func() bool { return d.Stats()[0].Delivered == 1 })
	r := rc.requests()[0]
	if r.Method != http.MethodPost || r.URI != "/hooks/regcache" {
		t.Fatalf("%s %s", r.Method, r.URI)
	}
	var got feed.Event
	if err := json.Unmarshal(r.Body, &got); err != nil || !reflect.DeepEqual(got, e) {
		t.Fatalf("body %s (%v), want the event %+v", r.Body, err, e)
	}
	for k, want := range map[string]string{
		"Content-Type": "application/json", HeaderEvent: feed.TagChanged, HeaderDelivery: e.ID + "." + shortID("ci"),
		"Authorization": "Bearer tok-123", "User-Agent": "regcache/1",
	} {
		if got := r.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	verifySignature(t, "s3cret-key", r)
}

func TestNoSecretNoSignature(t *testing.T) {
	rc := newReceiver(t, nil)
	d := start(t, Options{}, Config{URL: rc.URL})
	d.Deliver(testEvent(1))
	waitFor(t, "delivery", func() bool { return d.Stats()[0].Delivered == 1 })
	r := rc.requests()[0]
	if _, ok := r.Header[HeaderSignature]; ok || r.Header.Get(HeaderDelivery) == "" || r.Header.Get(HeaderEvent) != feed.TagChanged {
		t.Fatalf("headers %v: want event and delivery, and no signature without a secret", r.Header)
	}
}

func TestFormatDockerHub(t *testing.T) {
	rc := newReceiver(t, nil)
	d := start(t, Options{DockerHub: func(r string) bool { return r == "docker.io" }},
		Config{URL: rc.URL, Format: FormatDockerHub, Secret: "k"})
	hub := testEvent(1)
	hub.Registry, hub.Repository, hub.Tag, hub.Image = "docker.io", "library/nginx", "1.27", "docker.io/library/nginx:1.27"
	other := testEvent(2)
	other.Registry, other.Repository, other.Tag, other.Image = "ghcr.io", "org/team/app", "v2", "ghcr.io/org/team/app:v2"
	d.Deliver(hub)
	d.Deliver(other)
	waitFor(t, "deliveries", func() bool { return d.Stats()[0].Delivered == 2 })
	type payload struct {
		CallbackURL *string `json:"callback_url"`
		PushData    struct {
			Images   []string `json:"images"`
			PushedAt int64    `json:"pushed_at"`
			Pusher   string   `json:"pusher"`
			Tag      string   `json:"tag"`
		} `json:"push_data"`
		Repository map[string]any `json:"repository"`
	}
	pushedAt, _ := time.Parse(time.RFC3339, hub.Time)
	for i, want := range []struct{ repoName, name, namespace, tag, repoURL string }{
		{"library/nginx", "nginx", "library", "1.27", "https://hub.docker.com/_/nginx"},
		{"ghcr.io/org/team/app", "app", "ghcr.io/org/team", "v2", ""},
	} {
		r := rc.requests()[i]
		var p payload
		if err := json.Unmarshal(r.Body, &p); err != nil {
			t.Fatal(err)
		}
		rp := p.Repository
		if p.CallbackURL == nil || *p.CallbackURL != "" || p.PushData.Tag != want.tag || p.PushData.PushedAt != pushedAt.Unix() ||
			p.PushData.Pusher != "regcache" || p.PushData.Images == nil || len(p.PushData.Images) != 0 {
			t.Errorf("%d: %s: callback_url and push_data wrong", i, r.Body)
		}
		if rp["repo_name"] != want.repoName || rp["name"] != want.name || rp["namespace"] != want.namespace ||
			rp["owner"] != want.namespace || rp["status"] != "Active" || rp["repo_url"] != want.repoURL || rp["is_official"] != (i == 0) {
			t.Errorf("%d: repository %v, want repo_name %s, name %s, namespace %s", i, rp, want.repoName, want.name, want.namespace)
		}
		if r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("Content-Type %q", r.Header.Get("Content-Type"))
		}
		verifySignature(t, "k", r)
	}
}

func TestFormatTemplate(t *testing.T) {
	rc := newReceiver(t, nil)
	d := start(t, Options{}, Config{URL: rc.URL + "/v1/update?image={{.Image}}&digest={{.Digest}}&repo={{.Repository}}&tag={{.Tag}}",
		Format: FormatTemplate, Secret: "k", Headers: map[string]string{"Authorization": "Bearer wt-token"}})
	e := testEvent(1)
	d.Deliver(e)
	waitFor(t, "delivery", func() bool { return d.Stats()[0].Delivered == 1 })
	r := rc.requests()[0]
	want := "/v1/update?image=reg.test%2Fteam%2Fapp%3Av1&digest=sha256%3A" + strings.TrimPrefix(e.Digest, "sha256:") +
		"&repo=team%2Fapp&tag=v1"
	if r.Method != http.MethodPost || r.URI != want || len(r.Body) != 0 {
		t.Fatalf("%s %s body %q; want POST %s, no body", r.Method, r.URI, r.Body, want)
	}
	if r.Header.Get("Content-Type") != "" || r.Header.Get("Authorization") != "Bearer wt-token" {
		t.Fatalf("headers %v", r.Header)
	}
	verifySignature(t, "k", r) // over the empty body
	if d.Hooks()[0].Name() != strings.TrimPrefix(rc.URL, "http://") {
		t.Errorf("default name %q: the host alone, no path, query or placeholder", d.Hooks()[0].Name())
	}
}

// TestRetriesThenSigned is the case on the real schedule: 500 three times, then
// 200. The event arrives exactly once more, signed, with one delivery id throughout, after
// waits of about 1, 2 and 4 s.
func TestRetriesThenSigned(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n <= 3 {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	d := start(t, Options{}, Config{Name: "flaky", URL: rc.URL, Secret: "s3cret", MaxRetries: DefaultMaxRetries})
	e := testEvent(7)
	d.Deliver(e)
	waitFor(t, "delivery", func() bool { return d.Stats()[0].Delivered == 1 })
	d.Close(context.Background()) // no attempt can come after this
	got := rc.requests()
	if len(got) != 4 {
		t.Fatalf("%d attempts, want 4 (three 500s, then the 200)", len(got))
	}
	for i, r := range got {
		if r.Header.Get(HeaderDelivery) != e.ID+"."+shortID("flaky") {
			t.Errorf("attempt %d: delivery id %q", i+1, r.Header.Get(HeaderDelivery))
		}
		verifySignature(t, "s3cret", r)
		if i > 0 {
			gap, nominal := r.At.Sub(got[i-1].At), time.Second<<(i-1)
			if gap < nominal*8/10 {
				t.Errorf("retry %d came %v after the attempt before; the schedule says %v (less 20%% jitter)", i, gap, nominal)
			}
		}
	}
	if s := d.Stats()[0]; s.Delivered != 1 || s.Retries != 3 || s.Failed != 0 || s.Dropped != 0 || s.Queued != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestClientErrorNotRetried(t *testing.T) {
	for _, status := range []int{http.StatusNotFound, http.StatusBadRequest, http.StatusUnauthorized} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) })
			d := start(t, Options{backoff: 5 * time.Millisecond}, Config{URL: rc.URL})
			d.Deliver(testEvent(1))
			waitFor(t, "failure", func() bool { return d.Stats()[0].Failed == 1 })
			d.Close(context.Background())
			if n := len(rc.requests()); n != 1 {
				t.Fatalf("%d attempts, want 1", n)
			}
			if s := d.Stats()[0]; s.Retries != 0 || s.Delivered != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

// TestRetryAfterWins: with retries 5 ms apart, a 429's Retry-After: 1 holds the next try a
// second.
func TestRetryAfterWins(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	d := start(t, Options{backoff: 5 * time.Millisecond}, Config{URL: rc.URL, MaxRetries: DefaultMaxRetries})
	d.Deliver(testEvent(1))
	waitFor(t, "delivery", func() bool { return d.Stats()[0].Delivered == 1 })
	got := rc.requests()
	if len(got) != 2 {
		t.Fatalf("%d attempts, want 2", len(got))
	}
	if gap := got[1].At.Sub(got[0].At); gap < 950*time.Millisecond {
		t.Fatalf("retried %v after a 429 with Retry-After: 1", gap)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 2, 17, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"": -1, "soon": -1, "-3": -1, "0": 0, "1": time.Second, "120": 2 * time.Minute, "86400": maxRetryAfter,
		now.Add(30 * time.Second).Format(http.TimeFormat): 30 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):       0,
		now.Add(48 * time.Hour).Format(http.TimeFormat):   maxRetryAfter,
	} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("Retry-After %q: %v, want %v", v, got, want)
		}
	}
}

func TestBackoffSchedule(t *testing.T) {
	for retry := range 40 {
		nominal := min(time.Second<<min(retry, 20), maxBackoff)
		for range 50 {
			if got := backoff(time.Second, retry); got < nominal*8/10 || got > nominal {
				t.Fatalf("retry %d: waits %v, want 80-100%% of %v", retry+1, got, nominal)
			}
		}
	}
}

// TestRedirectNotFollowed: a webhook target's 302 fails the delivery; the host it names
// sees nothing.
func TestRedirectNotFollowed(t *testing.T) {
	elsewhere := newReceiver(t, nil)
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/stolen", http.StatusFound)
	})
	d := start(t, Options{backoff: 5 * time.Millisecond}, Config{URL: rc.URL, Secret: "k"})
	d.Deliver(testEvent(1))
	waitFor(t, "failure", func() bool { return d.Stats()[0].Failed == 1 })
	d.Close(context.Background())
	if n, m := len(rc.requests()), len(elsewhere.requests()); n != 1 || m != 0 {
		t.Fatalf("target saw %d requests, the redirect's host %d; want 1 and 0", n, m)
	}
}

// TestTimeoutRetried: an attempt past the hook's timeout is cut and tried again.
func TestTimeoutRetried(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, r *http.Request) {
		if n == 1 {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	})
	d := start(t, Options{backoff: 5 * time.Millisecond}, Config{URL: rc.URL, Timeout: 200 * time.Millisecond, MaxRetries: 1})
	d.Deliver(testEvent(1))
	waitFor(t, "delivery", func() bool { return d.Stats()[0].Delivered == 1 })
	if s := d.Stats()[0]; s.Retries != 1 || len(rc.requests()) != 2 {
		t.Fatalf("stats %+v, %d requests; want one timeout, then the delivery", s, len(rc.requests()))
	}
}

// TestQueueFullDrops: while the receiver holds the first delivery, the queue takes
// queue_size events (that one included) and the change feed's Publish never waits; the
// rest are dropped and counted exactly, and the receiver then gets what was queued, in order.
func TestQueueFullDrops(t *testing.T) {
	release := make(chan struct{})
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			<-release
		}
	})
	d := start(t, Options{}, Config{URL: rc.URL, QueueSize: 3})
	log := feed.NewLog(100)
	log.Notify(d.Deliver)
	published := make(chan []feed.Event)
	go func() {
		var out []feed.Event
		for i := range 10 {
			e := testEvent(i)
			e.Tag = fmt.Sprint("t", i)
			out = append(out, log.Publish(e))
		}
		published <- out
	}()
	var events []feed.Event
	select {
	case events = <-published:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish blocked on a webhook whose receiver does not answer")
	}
	if s := d.Stats()[0]; s.Dropped != 7 || s.Queued != 3 || d.Hooks()[0].Room() != 0 {
		t.Fatalf("stats %+v, room %d; want 7 dropped, 3 queued, no room", s, d.Hooks()[0].Room())
	}
	close(release)
	waitFor(t, "deliveries", func() bool { return d.Stats()[0].Delivered == 3 })
	for i, r := range rc.requests() {
		var e feed.Event
		if json.Unmarshal(r.Body, &e) != nil || e.ID != events[i].ID {
			t.Fatalf("delivery %d is %s, want event %s", i, r.Body, events[i].ID)
		}
	}
	if room := d.Hooks()[0].Room(); room != 3 {
		t.Fatalf("room %d after the queue emptied, want 3", room)
	}
}

// TestReceiverDownThenUp: a receiver whose port refuses connections for a while gets, once
// up, everything that fit the queue, in order; the dropped count is the rest.
func TestReceiverDownThenUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // down: connections are refused
	d := start(t, Options{backoff: 20 * time.Millisecond}, Config{URL: "http://" + addr + "/hook", QueueSize: 5, MaxRetries: 30})
	var events []feed.Event
	for i := range 8 {
		e := testEvent(i)
		events = append(events, e)
		d.Deliver(e)
	}
	waitFor(t, "a refused attempt", func() bool { return d.Stats()[0].Retries >= 2 })
	if s := d.Stats()[0]; s.Dropped != 3 || s.Queued != 5 || s.Delivered != 0 {
		t.Fatalf("stats while down %+v; want 5 queued, 3 dropped", s)
	}

	var mu sync.Mutex
	var got []string
	srv := &http.Server{Handler: http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		var e feed.Event
		_ = json.NewDecoder(r.Body).Decode(&e)
		mu.Lock()
		got = append(got, e.ID)
		mu.Unlock()
	})}
	if ln, err = net.Listen("tcp", addr); err != nil {
		t.Fatalf("the receiver's port was taken meanwhile: %v", err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	waitFor(t, "the queued events", func() bool { return d.Stats()[0].Delivered == 5 })
	mu.Lock()
	defer mu.Unlock()
	for i, id := range got {
		if i >= 5 || id != events[i].ID {
			t.Fatalf("receiver got %v, want the first 5 events in order", got)
		}
	}
	if s := d.Stats()[0]; s.Dropped != 3 || s.Failed != 0 || s.Queued != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestCloseWhileRetrying: Close does not wait out a backoff; the event being retried and
// those behind it are dropped, each ack called once.
func TestCloseWhileRetrying(t *testing.T) {
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	d := start(t, Options{}, Config{URL: rc.URL, MaxRetries: DefaultMaxRetries})
	var acks, finished [3]atomic.Int32
	for i := range acks {
		if !d.Hooks()[0].Offer(testEvent(i), func(done bool) {
			acks[i].Add(1)
			if done {
				finished[i].Add(1)
			}
		}) {
			t.Fatal("Offer refused with room")
		}
	}
	waitFor(t, "the first retry's wait", func() bool { return d.Stats()[0].Retries == 1 })
	begin := time.Now()
	d.Close(context.Background())
	if took := time.Since(begin); took > 500*time.Millisecond {
		t.Fatalf("Close took %v while the sender waited to retry", took)
	}
	for i := range acks {
		if n := acks[i].Load(); n != 1 || finished[i].Load() != 0 {
			t.Fatalf("ack %d called %d times (%d finished), want once, unfinished (a fleet's replica may deliver it)", i, n, finished[i].Load())
		}
	}
	if s := d.Stats()[0]; s.Dropped != 3 || s.Queued != 0 || len(rc.requests()) != 1 {
		t.Fatalf("stats %+v, %d requests", s, len(rc.requests()))
	}
	if d.Hooks()[0].Offer(testEvent(9), func(bool) { t.Error("ack of an event Offer refused") }) || d.Hooks()[0].Room() != 0 {
		t.Fatal("a closed hook took an event")
	}
}

// TestCloseEndsAttemptInFlight: an attempt to a receiver that does not answer ends when
// Close's context does.
func TestCloseEndsAttemptInFlight(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	rc := newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	d := start(t, Options{}, Config{URL: rc.URL, Timeout: time.Minute})
	var acked atomic.Int32
	d.Hooks()[0].Offer(testEvent(1), func(bool) { acked.Add(1) })
	waitFor(t, "the attempt", func() bool { return len(rc.requests()) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	d.Close(ctx)
	if took := time.Since(begin); took > 2*time.Second {
		t.Fatalf("Close took %v with a 100 ms context", took)
	}
	if acked.Load() != 1 || d.Stats()[0].Dropped != 1 {
		t.Fatalf("acks %d, stats %+v", acked.Load(), d.Stats()[0])
	}
}

// TestFilterAndReset: a hook gets the events its filter matches and never a feed.Reset;
// an event it does not want is acked at once.
func TestFilterAndReset(t *testing.T) {
	rc := newReceiver(t, nil)
	d := start(t, Options{}, Config{URL: rc.URL, Filter: feed.Filter{Types: []string{feed.TagCreated}}},
		Config{Name: "all", URL: rc.URL + "/all"})
	changed, created := testEvent(1), testEvent(2)
	created.Type = feed.TagCreated
	reset := feed.Event{ID: "1764695224123-000000000003", Type: feed.Reset}
	var acked int
	for _, e := range []feed.Event{changed, reset} {
		if !d.Hooks()[0].Offer(e, func(bool) { acked++ }) {
			t.Fatal("Offer refused")
		}
	}
	if acked != 2 || d.Hooks()[0].Room() != DefaultQueueSize {
		t.Fatalf("%d acks, room %d: events the hook does not want are finished at once", acked, d.Hooks()[0].Room())
	}
	d.Deliver(changed)
	d.Deliver(reset)
	d.Deliver(created)
	waitFor(t, "deliveries", func() bool { return d.Stats()[0].Delivered == 1 && d.Stats()[1].Delivered == 2 })
	d.Close(context.Background())
	for _, r := range rc.requests() {
		if r.Header.Get(HeaderEvent) == feed.Reset || (r.URI == "/" && r.Header.Get(HeaderEvent) != feed.TagCreated) {
			t.Errorf("%s got a %s", r.URI, r.Header.Get(HeaderEvent))
		}
	}
	if n := len(rc.requests()); n != 3 {
		t.Fatalf("%d deliveries, want 3", n)
	}
}

// TestLogsShowNoSecret: what the hooks log (retries, failures, connection errors) names
// the hook, never its secret, header values, or the URL's query and user-info.
func TestLogsShowNoSecret(t *testing.T) {
	rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader([]int{http.StatusInternalServerError, http.StatusForbidden}[min(n, 2)-1])
	})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := ln.Addr().String()
	ln.Close()
	core, logs := observer.New(zap.DebugLevel)
	const query, header, secret = "QueryTok3n", "HeaderTok3n", "Secr3tKey"
	d := start(t, Options{Logger: zap.New(core), backoff: 5 * time.Millisecond},
		Config{Name: "answers", URL: rc.URL + "/h?token=" + query, Secret: secret, MaxRetries: 1, Headers: map[string]string{"X-Token": header}},
		Config{URL: "http://" + refused + "/h?token=" + query, Secret: secret, MaxRetries: 1, Headers: map[string]string{"X-Token": header}})
	d.Deliver(testEvent(1))
	waitFor(t, "failures", func() bool { return d.Stats()[0].Failed == 1 && d.Stats()[1].Failed == 1 })
	d.Close(context.Background())
	if logs.Len() == 0 {
		t.Fatal("nothing logged")
	}
	for _, entry := range logs.All() {
		line, _ := json.Marshal(map[string]any{"msg": entry.Message, "fields": entry.ContextMap()})
		for _, leak := range []string{query, header, secret} {
			if strings.Contains(string(line), leak) {
				t.Fatalf("log line shows %q: %s", leak, line)
			}
		}
		if _, ok := entry.ContextMap()["webhook"]; !ok {
			t.Errorf("log line names no hook: %s", line)
		}
	}
	if strings.Contains(fmt.Sprintf("%v %+v %#v", Config{Secret: secret},
		Config{Secret: secret}, Config{Secret: secret}), secret) {
		t.Fatal("a printed Config shows its secret")
	}
}

func TestCheckURL(t *testing.T) {
	for _, tc := range []struct {
		format, url, want string // want: "" for valid, else part of the error
	}{
		{FormatRegcache, "https://hooks.example.com/regcache?token=x", ""},
		{FormatCloudEvents, "http://10.0.0.5:8080/", ""},
		{FormatTemplate, "http://watchtower:8080/v1/update?image={{.Image}}", ""},
		{FormatTemplate, "http://hooks.example/{{.Repository}}/{{.Tag}}@{{.Digest}}", ""},
		{FormatTemplate, "http://hooks.example/plain", ""},
		{"xml", "http://hooks.example/", `unknown format "xml" (regcache, cloudevents, dockerhub, template)`},
		{FormatRegcache, "http://hooks.example/?image={{.Image}}", "need format: template"},
		{FormatTemplate, "http://hooks.example/?image={{.Name}}", "the placeholders are"},
		{FormatTemplate, "http://hooks.example/?image={{.Image", "the placeholders are"},
		{FormatTemplate, "http://hooks.example/{{range 1000000000}}x{{end}}", "is no placeholder"},
		{FormatTemplate, "http://hooks.example/{{.Image | printf \"%s\"}}", "is no placeholder"},
		{FormatTemplate, "http://hooks.example/{{$x := .Tag}}", "is no placeholder"},
		{FormatTemplate, "http://hooks.example/{{/* note */}}", ""},
		{FormatTemplate, "http://{{.Repository}}.example/", "not in the host"},
		{FormatRegcache, "hooks.example/regcache", "scheme must be http or https"},
		{FormatRegcache, "ftp://hooks.example/", "scheme must be http or https"},
		{FormatRegcache, "https:///path", "no host"},
		{FormatRegcache, "", "not a URL"},
		{FormatRegcache, "https://bob:pw@hooks.example/", "put credentials in headers"},
		{FormatRegcache, "https://hooks.example:port/", "not a URL"},
	} {
		err := CheckURL(tc.format, tc.url)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckURL(%s, %q) = %v, want %q", tc.format, tc.url, err, tc.want)
		}
		if err != nil && tc.url != "" && strings.Contains(err.Error(), tc.url) {
			t.Errorf("CheckURL(%q) shows the URL: %v", tc.url, err)
		}
	}
}

func TestDefaultName(t *testing.T) {
	for raw, want := range map[string]string{
		"https://hooks.example.com/regcache?token=secret":   "hooks.example.com",
		"http://watchtower:8080/v1/update?image={{.Image}}": "watchtower:8080",
		"https://hooks.slack.com/services/T000/B000/XXXX":   "hooks.slack.com", // the path is the credential
		"http://hooks.example/{{.Repository}}/x":            "hooks.example",
		"http://hooks.example/":                             "hooks.example",
	} {
		if got := DefaultName(raw); got != want {
			t.Errorf("DefaultName(%q) = %q, want %q", raw, got, want)
		}
	}
}

func TestNewRefuses(t *testing.T) {
	if _, err := New([]Config{{URL: "http://a.example/x"}, {URL: "http://a.example/x?other"}}, Options{}); err == nil ||
		!strings.Contains(err.Error(), "used twice") {
		t.Fatalf("two hooks named alike: %v", err)
	}
	if _, err := New([]Config{{URL: "http://a.example/{{.Image}}"}}, Options{}); err == nil {
		t.Fatal("a placeholder without format template was taken")
	}
}

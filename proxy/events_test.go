package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"regcache/internal/feed"
)

// serveEvents serves a proxy with events on 127.0.0.1; addr is where.
func serveEvents(t *testing.T, events *feed.Log) (srv *fasthttp.Server, addr string) {
	t.Helper()
	p, err := New(Options{Upstreams: []*Upstream{{Name: "docker.io", DockerHub: true}}, Default: "docker.io", Events: events})
	if err != nil {
		t.Fatal(err)
	}
	srv = p.Server()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	return srv, ln.Addr().String()
}

// A stream whose client stopped reading still ends at shutdown: its writer, blocked in a
// write that never completes, is freed by closing the connection.
func TestEventsStalledStreamEndsAtShutdown(t *testing.T) {
	events := feed.NewLog(20000)
	first := ""
	for i := range 20000 {
		e := events.Publish(feed.Event{Type: feed.TagChanged, Image: strings.Repeat("x", 1000)})
		if i == 0 {
			first = e.ID
		}
	}
	srv, addr := serveEvents(t, events)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Ask for the whole log, then never read: the writer fills the connection's buffers and
	// blocks.
	fmt.Fprintf(c, "GET /api/v1/events?since=%s HTTP/1.1\r\nHost: x\r\n\r\n", first)
	time.Sleep(time.Second)
	events.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.ShutdownWithContext(ctx); err != nil {
		t.Fatalf("shutdown with a stalled stream: %v after %v", err, time.Since(start))
	}
}

// A stream opened without Last-Event-ID starts with a bare id line, the newest id (with
// an empty log, one that resumes from its start): a client that loses the stream before
// its first event reconnects with it and gets what was published meanwhile.
func TestEventsStreamStartsWithID(t *testing.T) {
	events := feed.NewLog(100)
	srv, addr := serveEvents(t, events)
	defer func() { events.Close(); _ = srv.Shutdown() }()
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	// open reads the stream up to its first id line and its first data line (or only the
	// id when data is false), then disconnects.
	open := func(lastID string, data bool) (id, event string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/api/v1/events", nil)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		lines := bufio.NewScanner(resp.Body)
		for lines.Scan() {
			line := lines.Text()
			if v, ok := strings.CutPrefix(line, "id: "); ok {
				id = v
				if !data {
					return id, ""
				}
			}
			if v, ok := strings.CutPrefix(line, "data: "); ok {
				return id, v
			}
		}
		t.Fatalf("the stream ended without an id (last id %q): %v", id, lines.Err())
		return "", ""
	}
	for round, tag := range []string{"first", "second"} {
		start, _ := open("", false)
		// Published while the client is away (a restart, a load balancer's idle timeout).
		e := events.Publish(feed.Event{Type: feed.TagChanged, Tag: tag})
		id, data := open(start, true)
		if id != e.ID || !strings.Contains(data, `"tag":"`+tag+`"`) {
			t.Fatalf("round %d: resuming from %q gave id %q, data %s; want %s", round, start, id, data, e.ID)
		}
	}
}

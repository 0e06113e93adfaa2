package proxy

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"regcache/internal/feed"
)

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
	p, err := New(Options{Upstreams: []*Upstream{{Name: "docker.io", DockerHub: true}}, Default: "docker.io", Events: events})
	if err != nil {
		t.Fatal(err)
	}
	srv := p.Server()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
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

package main

// BenchmarkHitWhileSubscribersStall: manifest hits over real loopback connections while
// events are published (1,000 a second, about 1 KB each) to one live subscriber, beside no
// other subscriber, beside 100 that read everything (the control: the CPU that writing to
// 100 streams takes), or beside 100 that never read (each one's socket fills, then its
// buffer of 256 events, and it is dropped; it comes back a second later, as a client
// would). Stalled subscribers must cost hits no more than reading ones, and the live
// subscriber must get every event (live-share 1).
//
//	go test -run '^$' -bench BenchmarkHitWhileSubscribersStall -benchtime 20000x ./cmd/regcache

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/feed"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

func BenchmarkHitWhileSubscribersStall(b *testing.B) {
	reg := registrytest.New(b, registrytest.NoAuth)
	reg.PushImage(b, "team/app", "v1", types.OCIManifestSchema1)
	rc := harness.Start(b, harness.Config("  tag_ttl: 1h\n", harness.Upstream("reg.test", reg.URL)), wire,
		harness.Options{NoAccessLog: true, Quiet: true})
	events := rc.Server.(*app).events
	const path = "/v2/reg.test/team/app/manifests/v1"
	if r := rc.Do(b, http.MethodHead, path); r.Status != http.StatusOK {
		b.Fatalf("warm-up HEAD: %d", r.Status)
	}
	for _, mode := range []struct {
		name           string
		reading, stall int
	}{{"none", 0, 0}, {"reading=100", 100, 0}, {"stalled=100", 0, 100}} {
		b.Run(mode.name, func(b *testing.B) {
			stop, stopPublishing := make(chan struct{}), make(chan struct{})
			var wg, publisher sync.WaitGroup
			var published, received atomic.Int64
			for range mode.stall {
				wg.Go(func() { stallingSubscriber(rc.Addr, stop) })
			}
			for range mode.reading {
				wg.Go(func() { liveSubscriber(rc.Addr, stop) })
			}
			// A live subscriber, reading every event it gets, and events published at 1,000
			// a second (a busy fleet's feed is a few a minute).
			wg.Go(func() { received.Store(liveSubscriber(rc.Addr, stop)) })
			platforms := map[string]string{}
			for i := range 8 { // about 1 KB an event: stalled sockets fill fast
				platforms[fmt.Sprintf("linux/arch%d", i)] = "sha256:" + strings.Repeat("a", 64)
			}
			time.Sleep(100 * time.Millisecond) // the subscribers are in
			publisher.Go(func() {
				tick := time.NewTicker(time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stopPublishing:
						return
					case <-tick.C:
					}
					events.Publish(feed.Event{Type: feed.TagChanged, Image: "reg.test/team/other:v1", Registry: "reg.test",
						Repository: "team/other", Tag: "v1", Digest: "sha256:" + strings.Repeat("b", 64), Platforms: platforms})
					published.Add(1)
				}
			})
			time.Sleep(500 * time.Millisecond) // the stalled sockets fill
			conn, err := net.Dial("tcp", rc.Addr)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			r := bufio.NewReader(conn)
			req := []byte("HEAD " + path + " HTTP/1.1\r\nHost: x\r\n\r\n")
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if _, err := conn.Write(req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(r, &http.Request{Method: http.MethodHead})
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Fatalf("HEAD: %v %v", resp, err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			close(stopPublishing)
			publisher.Wait()
			time.Sleep(200 * time.Millisecond) // the live subscriber reads the last events
			close(stop)
			wg.Wait()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(published.Load()), "events")
			b.ReportMetric(float64(received.Load())/float64(max(published.Load(), 1)), "live-share")
		})
	}
}

// stallingSubscriber opens streams that it never reads, reconnecting whenever regcache
// drops one, until stop.
func stallingSubscriber(addr string, stop <-chan struct{}) {
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		_ = c.(*net.TCPConn).SetReadBuffer(4096)
		_, _ = c.Write([]byte("GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n"))
		select {
		case <-stop:
			c.Close()
			return
		case <-time.After(time.Second):
			c.Close() // as a client that gave up on a stalled stream would, and comes back
		}
	}
}

// liveSubscriber reads one stream until stop and returns how many events it got.
func liveSubscriber(addr string, stop <-chan struct{}) int64 {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0
	}
	go func() { <-stop; c.Close() }()
	_, _ = c.Write([]byte("GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n"))
	var n int64
	s := bufio.NewScanner(c)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), "data: ") {
			n++
		}
	}
	return n
}

package main

// Connections: a client that trickles its headers or sends nothing is cut at read_timeout,
// idle keep-alive connections are closed at idle_timeout (10,000 of them, holding little
// heap), and max_conns_per_ip refuses the connection over the limit; meanwhile an ordinary
// client is served without waiting on any of them.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"regcache/internal/harness"
)

// TestSlowloris: clients that send one header byte every 500 ms are cut once
// read_timeout (2 s here) has passed since their first byte, and clients that connect and
// send nothing once it has passed since they connected, while a normal client is served
// throughout without waiting on them.
func TestSlowloris(t *testing.T) {
	const (
		readTimeout = 2 * time.Second
		tick        = 500 * time.Millisecond
		trickling   = 50
		silent      = 10
	)
	_, rc, normal := startForAbuse(t, "read_timeout: 2s", "idle_timeout: 10s")
	rc.ExpectServed(t, normal)

	type result struct {
		silent bool
		after  time.Duration // from connecting to being cut; -1: never cut
	}
	results := make(chan result, trickling+silent)
	var wg sync.WaitGroup
	for i := range trickling + silent {
		c, err := net.DialTimeout("tcp", rc.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		quiet := i >= trickling
		wg.Go(func() {
			defer c.Close()
			// Whatever the server sends (a 408, or nothing) ends the wait, as does a close.
			closed := make(chan struct{})
			go func() {
				_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
				_, _ = io.Copy(io.Discard, c)
				close(closed)
			}()
			header := "GET " + normal + " HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("z", 100)
			for i := 0; i < len(header); i++ {
				select {
				case <-closed:
					results <- result{quiet, time.Since(start)}
					return
				case <-time.After(tick):
				}
				if quiet {
					continue
				}
				if _, err := c.Write([]byte{header[i]}); err != nil {
					<-closed
					results <- result{quiet, time.Since(start)}
					return
				}
			}
			results <- result{quiet, -1} // a header trickled over a minute: never cut
		})
	}
	// Meanwhile a normal client is answered promptly, again and again.
	var worst time.Duration
	normals := 0
	for deadline := time.Now().Add(readTimeout + 2*tick + time.Second); time.Now().Before(deadline); {
		worst = max(worst, rc.ExpectServed(t, normal))
		normals++
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	close(results)
	var lo, hi [2]time.Duration // [trickling, silent]
	lo = [2]time.Duration{time.Hour, time.Hour}
	for res := range results {
		if res.after < 0 {
			t.Fatal("a slow client was never cut")
		}
		k := 0
		if res.silent {
			k = 1
		}
		lo[k], hi[k] = min(lo[k], res.after), max(hi[k], res.after)
	}
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	t.Logf("read_timeout %v: %d clients sending a byte every %v cut %v to %v after connecting; %d silent clients cut %v to %v; "+
		"%d normal requests meanwhile, slowest %v", readTimeout, trickling, tick, ms(lo[0]), ms(hi[0]), silent, ms(lo[1]), ms(hi[1]),
		normals, worst.Round(10*time.Microsecond))
	// Not cut early (with slack for a loaded machine, where the client may note its start
	// late).
	if lo[0] < readTimeout || lo[1] < readTimeout*3/4 {
		t.Errorf("a slow client was cut before read_timeout %v (%v, %v)", readTimeout, lo[0], lo[1])
	}
	// The first byte goes one tick after connecting; the cut is seen at the next tick at
	// the latest. Allow three seconds more for a loaded machine.
	if hi[0] > tick+readTimeout+tick+3*time.Second || hi[1] > readTimeout+tick+3*time.Second {
		t.Errorf("slow clients were cut only after %v (trickling) and %v (silent); read_timeout %v", hi[0], hi[1], readTimeout)
	}
	if worst > 3*time.Second {
		t.Errorf("a normal request took %v while slow clients were connected", worst)
	}
}

// TestMaxConnsPerIP: with max_conns_per_ip 8, a ninth connection from the same
// address is refused (429, closed), and a slot freed is usable again.
func TestMaxConnsPerIP(t *testing.T) {
	const limit = 8
	_, rc, normal := startForAbuse(t, "max_conns_per_ip: "+strconv.Itoa(limit))
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	ask := func(c net.Conn) (*http.Response, error) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET "+normal+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	for i := range limit {
		c, err := net.DialTimeout("tcp", rc.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if resp, err := ask(c); err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection %d of %d: %v %v", i+1, limit, resp, err)
		}
	}
	over := func() (*http.Response, error) {
		c, err := net.DialTimeout("tcp", rc.Addr, 5*time.Second)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		// The server answers as it accepts, before any request: read first.
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			resp.Body.Close()
			if n, _ := c.Read(make([]byte, 1)); n != 0 {
				t.Error("refused connection left open")
			}
		}
		return resp, err
	}
	for i := range 3 {
		resp, err := over()
		if err == nil && resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("connection %d over the limit: %d, want 429", i+1, resp.StatusCode)
		}
		// err: reset before the answer could be read; refused either way.
	}
	// The connections within the limit are unaffected.
	if resp, err := ask(conns[0]); err != nil || resp.StatusCode != 200 {
		t.Fatalf("a connection within the limit, again: %v %v", resp, err)
	}
	// Freeing one slot admits one more.
	conns[0].Close()
	conns = conns[1:]
	var admitted net.Conn
	for deadline := time.Now().Add(3 * time.Second); admitted == nil; {
		c, err := net.DialTimeout("tcp", rc.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := ask(c); err == nil && resp.StatusCode == 200 {
			admitted = c
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("a freed slot was never usable again")
		}
		time.Sleep(50 * time.Millisecond)
	}
	conns = append(conns, admitted)
}

// fdLimit is RLIMIT_NOFILE's soft limit (Go raises it to the hard limit at start-up).
func fdLimit(t testing.TB) uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Skipf("cannot read the open-file limit: %v", err)
	}
	return rl.Cur
}

// holdIdle opens n keep-alive connections to addr in batches of 500, asks /healthz once
// on each (so that the server's idle_timeout, not read_timeout, is what applies), and then
// waits on each for the server to close it. It reports "open <n>" once all are open, and
// "closed <k> <min ms> <max ms>" once every one was closed or wait passed: k closed by the
// server, each after min to max ms of idleness (from its answer to its close).
func holdIdle(addr string, n int, wait time.Duration, report func(string)) error {
	var (
		mu       sync.Mutex
		conns    = make([]net.Conn, 0, n)
		closed   int
		lo, hi   time.Duration
		failed   error
		watchers sync.WaitGroup
	)
	lo = time.Hour
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	req := []byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	open := func() error {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			return err
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var resp *http.Response
		if _, err = c.Write(req); err == nil {
			if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("/healthz: %d", resp.StatusCode)
				}
			}
		}
		if err != nil {
			c.Close()
			return err
		}
		idleSince := time.Now()
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		watchers.Go(func() {
			_ = c.SetDeadline(idleSince.Add(wait))
			n, err := c.Read(make([]byte, 1))
			if n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
				return // it sent something, or is still open
			}
			d := time.Since(idleSince) // EOF or reset: the server closed it
			mu.Lock()
			closed++
			lo, hi = min(lo, d), max(hi, d)
			mu.Unlock()
		})
		return nil
	}
	for opened := 0; opened < n; {
		batch := min(500, n-opened)
		var wg sync.WaitGroup
		for range batch {
			wg.Go(func() {
				if err := open(); err != nil {
					mu.Lock()
					failed = err
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if failed != nil {
			return fmt.Errorf("opening connection %d of %d: %w", opened+1, n, failed)
		}
		opened += batch
	}
	report(fmt.Sprintf("open %d", n))
	watchers.Wait()
	report(fmt.Sprintf("closed %d %d %d", closed, lo.Milliseconds(), hi.Milliseconds()))
	return nil
}

// TestIdleConnectionsHelper is not a test: TestIdleConnections runs the test binary again
// with it to hold the client ends of the idle connections in a second process, so that
// each process needs only ~10,000 file descriptors.
func TestIdleConnectionsHelper(t *testing.T) {
	addr := os.Getenv("REGCACHE_ABUSE_IDLE_ADDR")
	if addr == "" {
		t.Skip("helper process for TestIdleConnections")
	}
	n, _ := strconv.Atoi(os.Getenv("REGCACHE_ABUSE_IDLE_N"))
	if err := holdIdle(addr, n, 40*time.Second, func(s string) { fmt.Println("ABUSE-IDLE " + s) }); err != nil {
		fmt.Println("ABUSE-IDLE error " + err.Error())
	}
}

// TestIdleConnections: 10,000 idle keep-alive connections are all closed once
// idle_timeout (2 s here) passes, a normal client is served throughout, and the server's
// heap holds less than 4 KiB per idle connection: an idle connection gives its read and
// write buffers (max_header_size + 4 KiB) back to the pools, so 10,000 of them cost ~10 MiB,
// not ~230 MiB.
//
// Both ends of 10,000 connections in one process take 20,000+ descriptors. With an
// open-file limit of at least 25,000 both ends stay here; with less (the limit here is
// 20,000) the client ends go to a second process; below 12,000 the test is skipped.
func TestIdleConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("short: opens 10,000 connections")
	}
	const n = 10_000
	const idleTimeout = 2 * time.Second
	limit := fdLimit(t)
	inProcess := limit >= 25_000
	if !inProcess && limit < 12_000 {
		t.Skipf("open-file limit %d is below 12,000: 10,000 idle connections need more (raise ulimit -n)", limit)
	}
	// read_timeout stays long: a close well before it can only be idle_timeout's.
	_, rc, normal := startForAbuse(t, "read_timeout: 30s", "idle_timeout: 2s")
	rc.ExpectServed(t, normal)
	var before runtime.MemStats
	harness.Settle(1)
	runtime.ReadMemStats(&before)

	lines := make(chan string, 4)
	errc := make(chan error, 1)
	if inProcess {
		t.Logf("open-file limit %d: both ends in this process", limit)
		go func() { errc <- holdIdle(rc.Addr, n, 40*time.Second, func(s string) { lines <- s }) }()
	} else {
		t.Logf("open-file limit %d is below 25,000: the client ends are held by a helper process", limit)
		cmd := exec.Command(os.Args[0], "-test.run=^TestIdleConnectionsHelper$", "-test.count=1", "-test.v=false")
		cmd.Env = append(os.Environ(), "REGCACHE_ABUSE_IDLE_ADDR="+rc.Addr, "REGCACHE_ABUSE_IDLE_N="+strconv.Itoa(n))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if s, ok := strings.CutPrefix(sc.Text(), "ABUSE-IDLE "); ok {
					if e, bad := strings.CutPrefix(s, "error "); bad {
						errc <- errors.New(e)
						return
					}
					lines <- s
				}
			}
			errc <- fmt.Errorf("helper process ended: %v", sc.Err())
		}()
	}
	next := func(timeout time.Duration) string {
		t.Helper()
		select {
		case s := <-lines:
			return s
		case err := <-errc:
			t.Fatalf("idle client: %v", err)
		case <-time.After(timeout):
			t.Fatalf("idle client said nothing for %v", timeout)
		}
		return ""
	}
	start := time.Now()
	if s := next(90 * time.Second); s != "open "+strconv.Itoa(n) {
		t.Fatalf("idle client: %q", s)
	}
	opened := time.Since(start)
	// While they are idle: the server holds them, and serves others promptly.
	var during runtime.MemStats
	harness.Collect() // no waiting here: the connections go at idle_timeout
	runtime.ReadMemStats(&during)
	var worst time.Duration
	for range 10 {
		worst = max(worst, rc.ExpectServed(t, normal))
		time.Sleep(100 * time.Millisecond)
	}
	var k int
	var loMS, hiMS int64
	if _, err := fmt.Sscanf(next(60*time.Second), "closed %d %d %d", &k, &loMS, &hiMS); err != nil {
		t.Fatal(err)
	}
	worst = max(worst, rc.ExpectServed(t, normal))
	held := int64(during.HeapInuse) - int64(before.HeapInuse)
	if inProcess {
		held = -1 // both ends share the heap: not the server's alone
	}
	t.Logf("%d connections opened and made idle in %v; %d closed by the server %d to %d ms after each went idle (idle_timeout %v); "+
		"slowest normal request meanwhile %v; server heap held while idle %.1f MiB (%.0f B a connection)",
		n, opened.Round(time.Millisecond), k, loMS, hiMS, idleTimeout, worst.Round(10*time.Microsecond), float64(held)/(1<<20), float64(held)/n)
	if k != n {
		t.Fatalf("%d of %d idle connections closed, want all", k, n)
	}
	// Closing 10,000 connections at once is a burst of work, and a loaded machine stretches
	// it (and delays when the client notes a connection idle, so the lower bound is loose
	// too): the upper bound is generous, yet far below read_timeout (30 s, which does not
	// apply to keep-alive waits anyway) and the client's own 40 s wait, so only
	// idle_timeout can have closed them.
	if lo, hi := time.Duration(loMS)*time.Millisecond, time.Duration(hiMS)*time.Millisecond; lo < idleTimeout/2 || hi > idleTimeout+15*time.Second {
		t.Errorf("idle connections were closed after %v to %v of idleness, idle_timeout %v", lo, hi, idleTimeout)
	}
	if worst > 5*time.Second {
		t.Errorf("a normal request took %v with %d idle connections open", worst, n)
	}
	if !inProcess && held > n*4<<10 {
		t.Errorf("%d idle connections held %.1f MiB of heap, more than 4 KiB each: are their buffers kept?", n, float64(held)/(1<<20))
	}
}

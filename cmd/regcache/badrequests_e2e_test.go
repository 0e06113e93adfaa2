package main

// Requests that are malformed, oversized or framed to smuggle another are refused with a
// 4xx registry error (or cut off by a server: limit) before anything is asked upstream,
// while regcache goes on serving everyone else. They go over raw TCP, where a real client
// would normalize what we send.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"regcache/internal/harness"
)

// errorCode checks that an answer read off the wire is a registry error, served as
// application/json, and returns its first code.
func errorCode(t testing.TB, resp *http.Response, body []byte) string {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json (a registry error): %.200s", ct, body)
	}
	errs, ok := harness.ParseErrors(body)
	if !ok {
		t.Errorf("body %.200q is no registry error", body)
		return ""
	}
	return errs[0].Code
}

// TestBadRequests: path traversal in plain and encoded forms, backslashes, names
// over 255 characters and invalid digests are each answered 4xx with a registry error,
// before anything is asked upstream.
func TestBadRequests(t *testing.T) {
	reg, rc, normal := startForAbuse(t)
	rc.ExpectServed(t, normal)
	reg.ResetCounts()
	hex64 := strings.Repeat("ab", 32)
	cases := []struct {
		path   string
		status int
		code   string
	}{
		// Traversal, as sent and encoded.
		{"/v2/../etc/passwd", 404, "ENDPOINT_UNKNOWN"},
		{"/v2/../etc/passwd/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library/../../nginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/./library/nginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library/nginx/manifests/../../../etc/passwd", 400, "TAG_INVALID"},
		{"/v2/library/nginx/blobs/../../../etc/passwd", 400, "DIGEST_INVALID"},
		{"/v2/library/..;/nginx/tags/list", 400, "NAME_INVALID"},
		{"/v2/%2e%2e/%2e%2e/etc/passwd/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/%2E%2E/etc/passwd/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/..%2f..%2fetc/passwd/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library%2fnginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library%2Fnginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library/nginx/manifests/..%2f..%2fetc%2fpasswd", 400, "NAME_INVALID"},
		{"/v2/library/nginx/manifests/%252e%252e", 400, "TAG_INVALID"}, // double encoding decodes once, to "%2e%2e"
		// Backslashes, raw and encoded.
		{`/v2/library\..\..\etc\passwd/manifests/latest`, 400, "NAME_INVALID"},
		{`/v2/library/nginx\..\x/manifests/latest`, 400, "NAME_INVALID"},
		{"/v2/library%5cnginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library%5C..%5Cx/manifests/latest", 400, "NAME_INVALID"},
		// Other malformed names.
		{"/v2/library/nginx%00/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/a%zz/manifests/latest", 400, "NAME_INVALID"},
		{"/v2//library//nginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/LIBRARY/nginx/manifests/latest", 400, "NAME_INVALID"},
		// Names over 255 characters, in one component or many.
		{"/v2/" + strings.Repeat("a", 256) + "/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/" + strings.Repeat("ab/", 90) + "x/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/" + strings.Repeat("a", 4000) + "/tags/list", 400, "NAME_INVALID"},
		{"/v2/" + strings.Repeat("a", 300) + "/blobs/sha256:" + hex64, 400, "NAME_INVALID"},
		{"/v2/library/nginx/manifests/" + strings.Repeat("t", 129), 400, "TAG_INVALID"},
		// Invalid digests: wrong length, upper-case hex, unknown or unsupported algorithms.
		{"/v2/library/nginx/manifests/sha256:abc", 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/manifests/sha256:" + hex64 + "ab", 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/blobs/sha256:" + hex64[:63], 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/manifests/sha256:" + strings.ToUpper(hex64), 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/blobs/sha256:" + strings.ToUpper(hex64), 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/manifests/md5:" + hex64[:32], 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/manifests/sha1:" + hex64[:40], 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/blobs/foo:" + hex64, 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/manifests/sha512:" + hex64, 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/blobs/sha256:", 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/blobs/latest", 400, "DIGEST_INVALID"},
		// Registries nobody configured, by path or ns=, metadata addresses included.
		{"/v2/169.254.169.254/latest/manifests/x", 404, "NAME_UNKNOWN"},
		{"/v2/library/nginx/manifests/latest?ns=169.254.169.254", 404, "NAME_UNKNOWN"},
		{"/v2/library/nginx/manifests/latest?ns=../../etc", 404, "NAME_UNKNOWN"},
		// Tags pages with a bad n.
		{"/v2/library/nginx/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"},
		{"/v2/library/nginx/tags/list?n=99999999999999999999", 400, "PAGINATION_NUMBER_INVALID"},
	}
	for _, tc := range cases {
		for _, method := range []string{"GET", "HEAD"} {
			raw := method + " " + tc.path + " HTTP/1.1\r\nHost: regcache.test\r\nAccept: */*\r\n\r\n"
			resp, body, err := harness.Send(t, rc.Addr, raw)
			if err != nil {
				t.Errorf("%s %.80s: no answer: %v", method, tc.path, err)
				continue
			}
			if resp.StatusCode != tc.status {
				t.Errorf("%s %.80s: %d %.200s, want %d", method, tc.path, resp.StatusCode, body, tc.status)
				continue
			}
			if method == "GET" {
				if code := errorCode(t, resp, body); code != tc.code {
					t.Errorf("GET %.80s: code %s, want %s", tc.path, code, tc.code)
				}
			}
		}
	}
	if n := reg.Total(); n != 0 {
		t.Errorf("%d requests reached upstream for refused input, want 0", n)
	}
	// An absolute-form target naming some other host is routed by its path alone: only the
	// configured upstream is ever asked, never the host in the request line.
	resp, body, err := harness.Send(t, rc.Addr, "GET http://169.254.169.254"+normal+" HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("absolute-form request: %v %v %.200s", err, resp, body)
	}
	rc.ExpectServed(t, normal)
}

// TestOversizedRequests: a request line or headers beyond max_header_size are
// answered 431 (or the connection is cut) and a body beyond max_request_body 413, and the
// server goes on serving. The limits are the configured ones, not fasthttp's defaults.
func TestOversizedRequests(t *testing.T) {
	_, rc, normal := startForAbuse(t, "max_header_size: 8KiB", "max_request_body: 4KiB")
	rc.ExpectServed(t, normal)
	pad := func(n int) string { return strings.Repeat("x", n) }
	refused := func(name, raw string, want int) {
		t.Helper()
		resp, body, err := harness.Send(t, rc.Addr, raw)
		switch {
		case err != nil:
			// The server answered and closed while we were still sending: the answer may be
			// lost to the reset. Cut off is fine too.
			t.Logf("%s: connection cut (%v)", name, err)
		case resp.StatusCode != want:
			t.Errorf("%s: %d %.200s, want %d", name, resp.StatusCode, body, want)
		default:
			errorCode(t, resp, body)
			if !resp.Close {
				t.Errorf("%s: connection kept open after %d", name, want)
			}
		}
		rc.ExpectServed(t, normal)
	}
	refused("one 12 KiB header", "GET "+normal+" HTTP/1.1\r\nHost: x\r\nX-Pad: "+pad(12<<10)+"\r\n\r\n", 431)
	refused("one 1 MiB header", "GET "+normal+" HTTP/1.1\r\nHost: x\r\nX-Pad: "+pad(1<<20)+"\r\n\r\n", 431)
	many := strings.Repeat("X-Many: "+pad(100)+"\r\n", 200) // 20 KiB in small headers
	refused("200 headers of 100 bytes", "GET "+normal+" HTTP/1.1\r\nHost: x\r\n"+many+"\r\n", 431)
	refused("a 16 KiB request line", "GET /v2/"+pad(16<<10)+"/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n", 431)
	refused("a 16 KiB Authorization", "GET "+normal+" HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "+pad(16<<10)+"\r\n\r\n", 431)
	refused("a 64 KiB body announced", "POST /api/v1/digests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n", 413)
	refused("a 5 KiB chunked body", "POST /api/v1/digests HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1400\r\n"+pad(5<<10)+"\r\n0\r\n\r\n", 413)

	// Under the limits all is well: a 6 KiB header is read, and the answer is the manifest.
	resp, body, err := harness.Send(t, rc.Addr, "GET "+normal+" HTTP/1.1\r\nHost: x\r\nX-Pad: "+pad(6<<10)+"\r\n\r\n")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("6 KiB header under an 8 KiB limit: %v %v %.200s", err, resp, body)
	}
}

// TestRequestBodies: a body on a GET (by Content-Length or chunked) is read and
// ignored, never a panic, and never parsed as a second request (no smuggling), and
// conflicting framing is refused.
func TestRequestBodies(t *testing.T) {
	_, rc, normal := startForAbuse(t)
	rc.ExpectServed(t, normal)
	smuggled := "GET /v2/team/app/manifests/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, tc := range []struct{ name, framing, body string }{
		{"Content-Length", "Content-Length: " + strconv.Itoa(len(smuggled)) + "\r\n", smuggled},
		{"chunked", "Transfer-Encoding: chunked\r\n", fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)},
		{"JSON on a manifest GET", "Content-Type: application/json\r\nContent-Length: 17\r\n", `{"images":["x"]}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", rc.Addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			// The request with a body, then an ordinary one on the same connection.
			_, _ = io.WriteString(c, "GET "+normal+" HTTP/1.1\r\nHost: x\r\n"+tc.framing+"\r\n"+tc.body+
				"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			br := bufio.NewReader(c)
			var got []int
			for range 2 {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("after %v: %v", got, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				got = append(got, resp.StatusCode)
			}
			if got[0] != 200 || got[1] != 200 {
				t.Fatalf("statuses %v, want [200 200]", got)
			}
			// Exactly two answers: the body was not taken for a third request.
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if n, _ := br.Read(make([]byte, 1)); n != 0 {
				t.Fatal("a third answer: the body was parsed as a request")
			}
		})
	}
	// Both framings at once (the classic smuggling vector) is refused or framed by
	// Transfer-Encoding as RFC 9112 §6.3 says; either way no smuggled request is answered.
	raw := "GET " + normal + " HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
	c, err := net.DialTimeout("tcp", rc.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, raw)
	br := bufio.NewReader(c)
	for i := 0; ; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if i == 0 && resp.StatusCode != 200 && (resp.StatusCode < 400 || resp.StatusCode >= 500) {
			t.Errorf("CL+TE: %d %.200s, want 200 or 4xx", resp.StatusCode, body)
		}
		if i == 1 && resp.StatusCode != 404 {
			// What follows a chunked body is a new request: the smuggled tag, which upstream
			// does not have. Anything else means the framing was misread.
			t.Errorf("CL+TE second answer %d %.200s", resp.StatusCode, body)
		}
		if i > 1 {
			t.Fatalf("CL+TE: %d answers", i+1)
		}
	}
	rc.ExpectServed(t, normal)
}

package harness

// Requests over raw TCP, exactly as written: Go's client would normalize what a test means
// to send (encoded paths, absolute-form targets, odd framing, oversized headers).

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Send writes text to a new connection to addr as it is and reads one answer, with a body
// unless the request is a HEAD. A nil answer and an error mean the connection was closed
// or reset before a readable answer (a test of a refusal may accept that); not reaching
// addr at all fails the test.
func Send(t testing.TB, addr, text string) (*http.Response, []byte, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, text); err != nil {
		return nil, nil, err
	}
	method, _, _ := strings.Cut(text, " ")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, body, err
}

// Raw sends a request with target exactly as given in its request line, Host
// regcache.test, Connection: close and header pairs, and reads the answer; no answer fails
// the test.
func (in *Instance) Raw(t testing.TB, method, target string, header ...string) Response {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: regcache.test\r\nConnection: close\r\n", method, target)
	for i := 0; i+1 < len(header); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", header[i], header[i+1])
	}
	b.WriteString("\r\n")
	resp, body, err := Send(t, in.Addr, b.String())
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

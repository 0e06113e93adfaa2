package harness

// Asking regcache through Go's HTTP client, as most clients do.

import (
	"encoding/base64"
	"io"
	"net/http"
	"testing"
	"time"
)

// Response is what a test needs from an answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Do sends method to path (with its query) with header pairs (name, value, ...) added and
// reads the whole answer; no answer fails the test.
func (in *Instance) Do(t testing.TB, method, path string, header ...string) Response {
	t.Helper()
	req, err := http.NewRequest(method, in.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := in.Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

// Timed is Do with the time the answer took.
func (in *Instance) Timed(t testing.TB, method, path string, header ...string) (Response, time.Duration) {
	t.Helper()
	start := time.Now()
	r := in.Do(t, method, path, header...)
	return r, time.Since(start)
}

// ExpectServed is an ordinary client's GET of path, which must be answered 200 whatever
// else is going on (abuse, load); it returns how long the answer took.
func (in *Instance) ExpectServed(t testing.TB, path string) time.Duration {
	t.Helper()
	r, took := in.Timed(t, http.MethodGet, path)
	if r.Status != http.StatusOK {
		t.Fatalf("normal client: GET %s: %d %s", path, r.Status, r.Body)
	}
	return took
}

// Basic is user:pass as a Basic Authorization header carries it, base64 (the header is
// "Basic " and this).
func Basic(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

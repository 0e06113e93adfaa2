package harness

// Secrets that must never show: what a test keeps of regcache's answers, and the search of
// those answers and regcache's logs for credentials and tokens.

import (
	"fmt"
	"strings"
	"testing"
)

// Transcript keeps every answer a test received (headers and body), to search them.
type Transcript struct{ b strings.Builder }

// Add keeps r and returns it.
func (tr *Transcript) Add(r Response) Response {
	for k, vs := range r.Header {
		fmt.Fprintf(&tr.b, "%s: %s\n", k, strings.Join(vs, ", "))
	}
	tr.b.Write(r.Body)
	tr.b.WriteByte('\n')
	return r
}

func (tr *Transcript) String() string { return tr.b.String() }

// ExpectNoSecrets fails when any secret occurs in in's logs or (tr not nil) in the
// answers kept. An empty secret, or no logs at all, would make the search prove nothing,
// and fail the test too.
func (in *Instance) ExpectNoSecrets(t testing.TB, tr *Transcript, secrets ...string) {
	t.Helper()
	logs := in.Logs.String()
	if len(logs) == 0 {
		t.Error("no logs at all: the leak check proves nothing")
	}
	for _, s := range secrets {
		if s == "" {
			t.Fatal("empty secret: the test would prove nothing")
		}
		if strings.Contains(logs, s) {
			t.Errorf("secret %.6s... appears in regcache's logs", s)
		}
		if tr != nil && strings.Contains(tr.String(), s) {
			t.Errorf("secret %.6s... appears in an answer to the client", s)
		}
	}
}

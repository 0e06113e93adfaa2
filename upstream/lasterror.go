package upstream

// The last failure of an upstream, for the status page and its metrics: someone looking at
// a slow or stale registry wants to know what it last said, without reading logs.
//
// What counts, once per operation (HeadManifest, GetManifest, Tags, OpenBlob): an error of
// KindUnavailable (no answer, a 5xx, a failing or refusing token endpoint), KindRateLimited
// (a 429 upstream sent) or KindInvalid (an answer not to be trusted). Not counted: a 404 or
// a denial (answers about an image, not failures of the upstream), a request never sent
// (held back, turned away, refused by the breaker: regcache's own doing, counted by their
// own metrics) and an operation whose caller went away.

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"
)

// FailureState is an upstream's failure count and its last failure.
type FailureState struct {
	// Count is the operations that failed since start.
	Count int64
	// Time is when the last one ended (zero before the first); Kind names its Kind
	// ("unavailable", "rate_limited", "invalid"); Status is the HTTP status upstream
	// answered (0 when none came); Message says what went wrong, never with credentials.
	Time    time.Time
	Kind    string
	Status  int
	Message string
}

// failures is the per-Registry record behind Failures: the last failure, its Count the
// number so far (failures are rare: a lock is cheap here, and the two are read together).
type failures struct {
	mu   sync.Mutex
	last FailureState
}

var failureKinds = map[Kind]string{KindUnavailable: "unavailable", KindRateLimited: "rate_limited", KindInvalid: "invalid"}

// maxFailureMessage bounds the message kept, in bytes.
const maxFailureMessage = 300

// note records err if it is a failure of the upstream (see the top of this file).
func (r *Registry) note(ctx context.Context, err error) {
	var e *Error
	if err == nil || !errors.As(err, &e) || NotSent(err) || failureKinds[e.Kind] == "" ||
		(ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded)) {
		return
	}
	msg := e.Message
	if e.Credentials {
		// Only the category shows, as on /readyz (the status is Status's).
		msg, _, _ = strings.Cut(msg, ":")
	}
	if len(msg) > maxFailureMessage {
		// The registry's own text can be long (a page of HTML from a proxy in front of it).
		msg = strings.ToValidUTF8(msg[:maxFailureMessage], "") + "…"
	}
	f := &r.failed
	f.mu.Lock()
	f.last = FailureState{Count: f.last.Count + 1, Time: time.Now(), Kind: failureKinds[e.Kind], Status: e.Status, Message: msg}
	f.mu.Unlock()
}

// Failures reports the upstream's failed operations and the last of them.
func (r *Registry) Failures() FailureState {
	f := &r.failed
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

package upstream

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// credentialState remembers the token endpoint refusing regcache's own credentials (they
// expired, or were revoked): an outage of this upstream for every repository, which the
// operator must see, not an answer about any one image.
type credentialState struct {
	failures atomic.Int64
	mu       sync.Mutex
	since    time.Time // first refusal of the current run; zero once a token is issued again
	status   int
}

func (c *credentialState) rejected(status int) {
	c.failures.Add(1)
	c.mu.Lock()
	if c.since.IsZero() {
		c.since = time.Now()
	}
	c.status = status
	c.mu.Unlock()
}

func (c *credentialState) accepted() {
	c.mu.Lock()
	c.since = time.Time{}
	c.mu.Unlock()
}

// CredentialState is what /readyz and the metrics show of an upstream's token endpoint.
type CredentialState struct {
	// Failures counts token requests refused with 401 or 403 since start.
	Failures int64
	// FailingSince is when the current run of refusals began; zero while tokens are issued.
	FailingSince time.Time
	// Status is the last refusal's HTTP status.
	Status int
	// Reason says what was refused, without the credentials themselves.
	Reason string
}

// Credentials reports the token endpoint's refusals of this upstream's credentials.
func (r *Registry) Credentials() CredentialState {
	c := &r.creds
	c.mu.Lock()
	defer c.mu.Unlock()
	return CredentialState{Failures: c.failures.Load(), FailingSince: c.since, Status: c.status, Reason: "credentials rejected by the token endpoint"}
}

// CredentialsRejected reports an error that is the token endpoint refusing regcache's
// credentials: an upstream failure (KindUnavailable), served around with stale answers.
func CredentialsRejected(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Credentials
}

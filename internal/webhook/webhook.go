// Package webhook delivers change-feed events to the HTTP receivers the operator configured
// (events.webhooks): each hook has a bounded queue and one sender that posts its events in
// order, retrying a receiver that fails, so that no receiver, slow or absent, ever holds up
// serving. Delivery is at least once; a delivery id lets a receiver drop repeats.
package webhook

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"regcache/internal/feed"
)

// Formats a hook's deliveries take.
const (
	// FormatRegcache posts the event's JSON, as the change feed carries it.
	FormatRegcache = "regcache"
	// FormatCloudEvents posts a CloudEvents 1.0 structured-mode event holding it.
	FormatCloudEvents = "cloudevents"
	// FormatDockerHub posts Docker Hub's push webhook payload, for receivers built for it.
	FormatDockerHub = "dockerhub"
	// FormatTemplate posts an empty body to the URL, its placeholders filled from the event.
	FormatTemplate = "template"
)

// Formats lists the formats in the order error messages name them.
var Formats = []string{FormatRegcache, FormatCloudEvents, FormatDockerHub, FormatTemplate}

// Defaults of a hook's keys (events.webhooks[]), which configs fills in.
const (
	DefaultFormat     = FormatRegcache
	DefaultTimeout    = 10 * time.Second
	DefaultMaxRetries = 5
	DefaultQueueSize  = 1000
	// MaxQueueSize bounds queue_size: a queue is held in memory.
	MaxQueueSize = 100000
)

// The headers every delivery carries; the signature only when the hook has a secret.
const (
	HeaderEvent     = "X-Regcache-Event"
	HeaderDelivery  = "X-Regcache-Delivery"
	HeaderSignature = "X-Regcache-Signature"
)

// Config is one hook.
type Config struct {
	// Name labels the hook in metrics and logs (DefaultName(URL) when empty).
	Name   string
	URL    string
	Format string // one of Formats; DefaultFormat when empty
	// Secret, when set, signs each body: X-Regcache-Signature: sha256=<hex HMAC-SHA256>.
	Secret string
	// Headers are added to every delivery (their values are never logged).
	Headers map[string]string
	Filter  feed.Filter
	// Timeout bounds one attempt (DefaultTimeout when 0). MaxRetries counts the attempts
	// after the first: 0 is none (configs fills in DefaultMaxRetries for a key left out).
	Timeout    time.Duration
	MaxRetries int
	QueueSize  int // DefaultQueueSize when 0
}

// String names the hook only: a Config holds its secret and header values.
func (c Config) String() string { return "webhook " + c.Name }

// GoString hides the secret and header values from %#v too.
func (c Config) GoString() string { return "webhook.Config{Name: " + fmt.Sprintf("%q", c.Name) + "}" }

// Options are what the hooks share.
type Options struct {
	// Source is the CloudEvents source: public_url, or urn:regcache:<hostname> when empty.
	Source string
	// DockerHub reports whether the upstream an event names is Docker Hub, whose
	// repositories the dockerhub format names without the registry (library/nginx).
	DockerHub func(registry string) bool
	Logger    *zap.Logger
	// DialContext replaces the dialer (tests: nothing beyond loopback).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// backoff replaces the first retry's wait (1 s) in tests of anything but the schedule.
	backoff time.Duration
}

// Dispatcher hands each event to the hooks that want it.
type Dispatcher struct {
	hooks []*Hook
	// stop is closed by Close: senders start nothing new. abort is cancelled when Close's
	// context ends: attempts in flight end too.
	stop      chan struct{}
	abortCtx  context.Context
	abort     context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	log       *zap.Logger
}

// New starts one sender per hook. Configs are those configs validated; an invalid one is
// an error all the same.
func New(cfgs []Config, o Options) (*Dispatcher, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Source == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "localhost"
		}
		o.Source = "urn:regcache:" + host
	}
	if o.DockerHub == nil {
		o.DockerHub = func(string) bool { return false }
	}
	if o.backoff <= 0 {
		o.backoff = firstBackoff
	}
	d := &Dispatcher{stop: make(chan struct{}), log: o.Logger}
	d.abortCtx, d.abort = context.WithCancel(context.Background())
	names := map[string]bool{}
	for _, c := range cfgs {
		h, err := newHook(c, &o)
		if err != nil {
			d.abort()
			return nil, err
		}
		if names[h.cfg.Name] {
			d.abort()
			return nil, fmt.Errorf("webhook %q: the name is used twice", h.cfg.Name)
		}
		names[h.cfg.Name] = true
		d.hooks = append(d.hooks, h)
	}
	for _, h := range d.hooks {
		d.wg.Go(func() { h.run(d.stop, d.abortCtx) })
	}
	return d, nil
}

// Hooks are the hooks, in the order configured: for a reader that offers each event to
// each hook itself.
func (d *Dispatcher) Hooks() []*Hook { return d.hooks }

// Deliver offers e to every hook. It never blocks (the change feed calls it under its lock):
// a hook whose queue is full drops e and counts it.
func (d *Dispatcher) Deliver(e feed.Event) {
	for _, h := range d.hooks {
		if !h.Offer(e, nil) {
			h.drop(e)
		}
	}
}

// Close stops the senders: none starts a delivery or a retry after it, and attempts in
// flight end when ctx does. Events still queued are dropped (counted, logged as a count),
// and every ack still owed is called. Close returns once the senders have.
func (d *Dispatcher) Close(ctx context.Context) {
	d.closeOnce.Do(func() {
		for _, h := range d.hooks {
			h.mu.Lock()
			h.closed = true
			h.mu.Unlock()
		}
		close(d.stop)
		done := make(chan struct{})
		go func() {
			d.wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			d.abort()
			<-done
		}
		d.abort()
		for _, h := range d.hooks {
			h.drain()
			h.client.CloseIdleConnections()
		}
	})
}

// HookStats are one hook's counters.
type HookStats struct {
	Name string
	// Delivered: events a receiver took (2xx). Failed: events given up on, refused (a 4xx
	// other than 429, a redirect) or failing past max_retries. Retries: failed attempts
	// followed by another. Dropped: events never delivered because the queue was full or
	// regcache shut down first. Queued: events waiting, the one being delivered included.
	Delivered, Failed, Retries, Dropped uint64
	Queued                              int
}

// Stats reads every hook's counters, in the order configured.
func (d *Dispatcher) Stats() []HookStats {
	out := make([]HookStats, 0, len(d.hooks))
	for _, h := range d.hooks {
		out = append(out, h.Stats())
	}
	return out
}

// shortID is a hook's part of its delivery ids: stable across restarts for one name.
func shortID(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:4])
}

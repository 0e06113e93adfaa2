package webhook

// One hook: its queue, its sender, and the attempts and waits of a delivery.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"text/template"
	"time"

	"go.uber.org/zap"

	"regcache/internal/feed"
)

const (
	// firstBackoff is the wait before the first retry; each next one doubles, up to
	// maxBackoff, and is drawn between 80% and 100% of that so that hooks failing together
	// do not retry in step.
	firstBackoff = time.Second
	maxBackoff   = 60 * time.Second
	// maxRetryAfter bounds a receiver's Retry-After, which otherwise wins.
	maxRetryAfter = 10 * time.Minute
	// maxAnswer is how much of a receiver's answer is read (and discarded), so that the
	// connection can be used again.
	maxAnswer = 64 << 10
)

// Hook is one receiver: a bounded queue and the sender that empties it in order.
type Hook struct {
	cfg    Config
	id     string // the hook's part of delivery ids
	tmpl   *template.Template
	client *http.Client
	opts   *Options
	log    *zap.Logger

	mu sync.Mutex
	// queue holds what is not finished, oldest first; the sender delivers queue[0] and
	// removes it when done, so queue_size bounds the one in delivery too.
	queue  []job
	closed bool
	// dropping is set from a drop until the queue takes an event again: one log line for
	// a run of drops, not one per event.
	dropping                            bool
	delivered, failed, retries, dropped uint64
	droppedElsewhere                    func() uint64 // CountDropped's
	// wake tells the sender that the queue has something.
	wake chan struct{}
}

// job is an event to deliver and the ack owed when it is done.
type job struct {
	e   feed.Event
	ack func(done bool)
}

func newHook(c Config, o *Options) (*Hook, error) {
	if c.Format == "" {
		c.Format = DefaultFormat
	}
	if c.Name == "" {
		c.Name = DefaultName(c.URL)
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.QueueSize <= 0 {
		c.QueueSize = DefaultQueueSize
	}
	c.QueueSize = min(c.QueueSize, MaxQueueSize)
	c.MaxRetries = max(c.MaxRetries, 0)
	if err := CheckURL(c.Format, c.URL); err != nil {
		return nil, fmt.Errorf("webhook %q: url: %w", c.Name, err)
	}
	h := &Hook{cfg: c, id: shortID(c.Name), opts: o, wake: make(chan struct{}, 1),
		log: o.Logger.With(zap.String("webhook", c.Name))}
	if c.Format == FormatTemplate {
		h.tmpl, _ = parseTemplate(c.URL) // CheckURL parsed it
	}
	dial := o.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: c.Timeout, KeepAlive: 30 * time.Second}).DialContext
	}
	h.client = &http.Client{
		// The operator named this receiver, and nothing else: a redirect is not followed
		// (it answers the attempt, which fails), and no proxy from the environment is used.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			Proxy: nil, DialContext: dial, TLSHandshakeTimeout: c.Timeout, ForceAttemptHTTP2: true,
			MaxIdleConns: 2, MaxIdleConnsPerHost: 2, IdleConnTimeout: 90 * time.Second,
		},
	}
	return h, nil
}

// Name is the hook's label.
func (h *Hook) Name() string { return h.cfg.Name }

// Offer queues e for delivery, with ack (optional) to be called exactly once when this
// hook is through with it: done is true when the delivery is finished (delivered, or given
// up), false when it was dropped unfinished at Close (a fleet's other replicas may deliver
// it). An event the hook does not want (its filter, or a feed.Reset) is finished at once.
// Offer never blocks; it returns false, and does not call ack, when the queue is full or
// the hook closed: the event is still the caller's.
func (h *Hook) Offer(e feed.Event, ack func(done bool)) bool {
	if e.Type == feed.Reset || !h.cfg.Filter.Match(e) {
		if ack != nil {
			ack(true)
		}
		return true
	}
	h.mu.Lock()
	if h.closed || len(h.queue) >= h.cfg.QueueSize {
		h.mu.Unlock()
		return false
	}
	h.queue = append(h.queue, job{e: e, ack: ack})
	if h.dropping {
		h.dropping = false
		h.log.Info("webhook queue has room again", zap.Uint64("dropped_total", h.dropped))
	}
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default: // the sender has been told already
	}
	return true
}

// Room is how many more events the queue takes now.
func (h *Hook) Room() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0
	}
	return h.cfg.QueueSize - len(h.queue)
}

// drop counts e, which the queue had no room for.
func (h *Hook) drop(e feed.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropped++
	if !h.dropping && !h.closed {
		h.dropping = true
		h.log.Warn("webhook queue full: dropping events until the receiver catches up",
			zap.Int("queue_size", h.cfg.QueueSize), zap.String("event", e.ID))
	}
}

// Stats reads the hook's counters.
func (h *Hook) Stats() HookStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	dropped := h.dropped
	if h.droppedElsewhere != nil {
		dropped += h.droppedElsewhere()
	}
	return HookStats{Name: h.cfg.Name, Delivered: h.delivered, Failed: h.failed, Retries: h.retries,
		Dropped: dropped, Queued: len(h.queue)}
}

// CountDropped adds what f counts to the hook's dropped events: those lost before they
// reached its queue (a fleet's stream trimmed before the hook's consumer group read them).
func (h *Hook) CountDropped(f func() uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.droppedElsewhere = f
}

// outcome is how one event's delivery ended.
type outcome int

const (
	delivered outcome = iota
	failed            // refused, or failing past max_retries
	abandoned         // regcache is shutting down
)

// run delivers the queue's head until stop.
func (h *Hook) run(stop <-chan struct{}, abort context.Context) {
	for {
		j, ok := h.head(stop)
		if !ok {
			return
		}
		out := h.deliver(j.e, stop, abort)
		h.mu.Lock()
		h.queue[0] = job{}
		h.queue = h.queue[1:]
		switch out {
		case delivered:
			h.delivered++
		case failed:
			h.failed++
		case abandoned:
			h.dropped++
		}
		h.mu.Unlock()
		if j.ack != nil {
			j.ack(out != abandoned)
		}
	}
}

// head waits for the queue's oldest event; false once stop is closed.
func (h *Hook) head(stop <-chan struct{}) (job, bool) {
	for {
		select {
		case <-stop:
			return job{}, false
		default:
		}
		h.mu.Lock()
		if len(h.queue) > 0 {
			j := h.queue[0]
			h.mu.Unlock()
			return j, true
		}
		h.mu.Unlock()
		select {
		case <-h.wake:
		case <-stop:
			return job{}, false
		}
	}
}

// drain finishes what Close left queued: each is dropped, and its ack called.
func (h *Hook) drain() {
	h.mu.Lock()
	left := h.queue
	h.queue = nil
	h.dropped += uint64(len(left))
	h.mu.Unlock()
	if len(left) > 0 {
		h.log.Warn("webhook: events left undelivered at shutdown", zap.Int("events", len(left)))
	}
	for _, j := range left {
		if j.ack != nil {
			j.ack(false)
		}
	}
}

// deliver sends e until the receiver takes it, refuses it, max_retries is spent or stop.
func (h *Hook) deliver(e feed.Event, stop <-chan struct{}, abort context.Context) outcome {
	target, body, contentType, err := h.request(e)
	if err != nil { // a template that fails on this event: no attempt can succeed
		h.log.Warn("webhook: no request for this event", zap.String("event", e.ID), zap.Error(err))
		return failed
	}
	header := make(http.Header, len(h.cfg.Headers)+5)
	for k, v := range h.cfg.Headers {
		header.Set(k, v)
	}
	header.Set("User-Agent", "regcache/1")
	if contentType != "" {
		header.Set("Content-Type", contentType)
	}
	delivery := e.ID + "." + h.id
	header.Set(HeaderEvent, e.Type)
	header.Set(HeaderDelivery, delivery)
	if h.cfg.Secret != "" {
		header.Set(HeaderSignature, Sign([]byte(h.cfg.Secret), body))
	}
	log := h.log.With(zap.String("delivery", delivery))
	for attempt := 0; ; attempt++ {
		status, retryAfter, err := h.attempt(abort, target, body, header)
		var never *unsendable
		switch {
		case errors.As(err, &never):
			log.Warn("webhook failed: no request can be made for this event", zap.String("error", describe(err)))
			return failed
		case err == nil && status >= 200 && status < 300:
			log.Debug("webhook delivered", zap.Int("status", status), zap.Int("attempt", attempt+1))
			return delivered
		case err == nil && status >= 300 && status < 400:
			log.Warn("webhook failed: the receiver redirected, which is not followed (configure the URL it redirects to)",
				zap.Int("status", status))
			return failed
		case err == nil && status != http.StatusTooManyRequests && status < 500:
			log.Warn("webhook failed: the receiver refused the event", zap.Int("status", status))
			return failed
		}
		// 5xx, 429, a timeout or a connection that failed: worth another try.
		fields := []zap.Field{zap.Int("attempt", attempt+1)}
		if err != nil {
			fields = append(fields, zap.String("error", describe(err)))
		} else {
			fields = append(fields, zap.Int("status", status))
		}
		select {
		case <-stop:
			log.Info("webhook: delivery abandoned at shutdown", fields...)
			return abandoned
		default:
		}
		if attempt >= h.cfg.MaxRetries {
			log.Warn("webhook failed: max_retries spent", fields...)
			return failed
		}
		wait := retryAfter
		if wait < 0 {
			wait = backoff(h.opts.backoff, attempt)
		}
		h.mu.Lock()
		h.retries++
		h.mu.Unlock()
		log.Info("webhook attempt failed; retrying", append(fields, zap.Duration("in", wait))...)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			log.Info("webhook: delivery abandoned at shutdown")
			return abandoned
		}
	}
}

// unsendable is a request that could not be made: no retry would make it.
type unsendable struct{ err error }

func (u *unsendable) Error() string { return u.err.Error() }
func (u *unsendable) Unwrap() error { return u.err }

// attempt posts body once; retryAfter is the receiver's Retry-After, or -1 without one.
func (h *Hook) attempt(ctx context.Context, target string, body []byte, header http.Header) (status int, retryAfter time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return 0, -1, &unsendable{err}
	}
	req.Header = header.Clone()
	resp, err := h.client.Do(req)
	if err != nil {
		return 0, -1, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
	return resp.StatusCode, parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()), nil
}

// describe is err without the URL (*url.Error names it whole: user-info, query and all).
func describe(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return err.Error()
}

// backoff is the wait before retry number retry+1: base doubled retry times, at most
// maxBackoff, drawn between 80% and 100% of that.
func backoff(base time.Duration, retry int) time.Duration {
	d := maxBackoff
	if retry < 16 && base<<retry < maxBackoff {
		d = base << retry
	}
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// parseRetryAfter reads Retry-After, seconds or an HTTP date, up to maxRetryAfter; -1 for
// none or one that does not parse.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return -1
	}
	var d time.Duration
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s < 0 {
			return -1
		}
		d = time.Duration(min(s, int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = max(t.Sub(now), 0)
	} else {
		return -1
	}
	return min(d, maxRetryAfter)
}

// Sign is the X-Regcache-Signature value for body: sha256=<hex HMAC-SHA256 with secret>.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

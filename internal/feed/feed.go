// Package feed is regcache's change feed: the events it records when it learns that a tag
// points somewhere new, kept in a bounded log that subscribers read live or resume from.
package feed

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"regcache/cache"
	"regcache/upstream"
)

// Event types.
const (
	TagChanged = "tag.changed"
	// TagCreated and TagDeleted come from the tag lists of watched repositories.
	TagCreated = "tag.created"
	TagDeleted = "tag.deleted"
	// Reset tells a subscriber that the events after the id it resumed from are no longer
	// held (too far behind, or an id from before a restart): it resumes from now.
	Reset = "feed.reset"
)

// DefaultLogSize is how many events the log keeps (events.log_size).
const DefaultLogSize = 10000

// Event is one change, as subscribers receive it.
type Event struct {
	ID             string `json:"id"`
	Type           string `json:"type"`
	Time           string `json:"time"` // RFC 3339
	Image          string `json:"image,omitempty"`
	Registry       string `json:"registry,omitempty"`
	Repository     string `json:"repository,omitempty"`
	Tag            string `json:"tag,omitempty"`
	Digest         string `json:"digest,omitempty"`
	PreviousDigest string `json:"previousDigest,omitempty"`
	MediaType      string `json:"mediaType,omitempty"`
	// Platforms maps "os/arch[/variant]" to the digest of its manifest, for an index or
	// list whose body regcache holds.
	Platforms map[string]string `json:"platforms,omitempty"`
}

// Log keeps the last events in order and hands new ones to subscribers. Ids are
// "<epoch>-<sequence>", both fixed-width so that they sort as they were emitted; the epoch
// is the process's start, so an id from before a restart is told apart and answered with
// a reset.
type Log struct {
	mu     sync.Mutex
	size   int
	events []Event // a ring of size entries, oldest at start
	start  int
	seq    uint64
	epoch  string
	subs   map[*Subscription]struct{}
	// notify are called with each event as it is kept, in order, under the log's lock:
	// they must not block (webhook queues take or count a drop).
	notify []func(Event)
	closed bool // no more subscribers: the server is shutting down
	// changed counts tag.changed events; dropped, subscribers dropped for falling behind.
	changed, dropped uint64
}

// NewLog keeps size events (DefaultLogSize for 0).
func NewLog(size int) *Log {
	if size <= 0 {
		size = DefaultLogSize
	}
	return &Log{size: size, epoch: fmt.Sprintf("%013d", time.Now().UnixMilli()), subs: map[*Subscription]struct{}{}}
}

// RecordMove records a tag that a revalidation or a miss found pointing somewhere new.
func (l *Log) RecordMove(m cache.TagMove) {
	l.Publish(Event{
		Type:           TagChanged,
		Time:           m.At.UTC().Format(time.RFC3339),
		Image:          m.Upstream + "/" + m.Repository + ":" + m.Tag,
		Registry:       m.Upstream,
		Repository:     m.Repository,
		Tag:            m.Tag,
		Digest:         string(m.To.Digest),
		PreviousDigest: string(m.From.Digest),
		MediaType:      m.To.MediaType,
		Platforms:      platforms(m.To.MediaType, m.Body),
	})
}

// platforms reads what an index or list names per platform; nil for anything else, or a
// body not held. The body was verified (digest and JSON shape) before it was kept.
func platforms(mediaType string, body []byte) map[string]string {
	if body == nil || (mediaType != upstream.MediaTypeOCIIndex && mediaType != upstream.MediaTypeDockerList) {
		return nil
	}
	var index struct {
		Manifests []struct {
			Digest   string `json:"digest"`
			Platform *struct {
				OS           string `json:"os"`
				Architecture string `json:"architecture"`
				Variant      string `json:"variant"`
			} `json:"platform"`
		} `json:"manifests"`
	}
	if json.Unmarshal(body, &index) != nil {
		return nil
	}
	out := map[string]string{}
	for _, m := range index.Manifests {
		p := m.Platform
		if p == nil || p.OS == "" || p.Architecture == "" || p.OS == "unknown" {
			continue // attestations and the like: no platform of their own
		}
		key := p.OS + "/" + p.Architecture
		if p.Variant != "" {
			key += "/" + p.Variant
		}
		if _, seen := out[key]; !seen {
			out[key] = m.Digest
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Publish gives e the next id, keeps it, and hands it to every subscriber that keeps up;
// one that does not is dropped (its last id still resumes it).
func (l *Log) Publish(e Event) Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	e.ID = l.epoch + "-" + fmt.Sprintf("%012d", l.seq)
	if e.Type == TagChanged {
		l.changed++
	}
	if len(l.events) < l.size {
		l.events = append(l.events, e)
	} else {
		l.events[l.start] = e
		l.start = (l.start + 1) % l.size
	}
	for _, fn := range l.notify {
		fn(e)
	}
	for s := range l.subs {
		select {
		case s.C <- e:
		default:
			s.end()
			l.dropped++
		}
	}
	return e
}

// Notify has fn called with every event kept from now on, in order. fn runs under the
// log's lock and must not block.
func (l *Log) Notify(fn func(Event)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.notify = append(l.notify, fn)
}

// at is the i-th kept event, oldest first; l.mu held.
func (l *Log) at(i int) Event { return l.events[(l.start+i)%len(l.events)] }

// since is the kept events after id (all of them for ""); reset is true when id is not
// one this log can resume from (too old, malformed, or from before a restart). l.mu held.
func (l *Log) since(id string) (out []Event, reset bool) {
	n := len(l.events)
	if id == "" {
		for i := range n {
			out = append(out, l.at(i))
		}
		return out, false
	}
	epoch, seqText, ok := strings.Cut(id, "-")
	seq, err := strconv.ParseUint(seqText, 10, 64)
	if !ok || err != nil || epoch != l.epoch || seq > l.seq {
		return nil, true
	}
	oldest := l.seq - uint64(n) + 1 // the first kept event's sequence (seq+1 when none)
	if seq+1 < oldest {
		return nil, true // the events right after it are gone
	}
	for i := int(seq + 1 - oldest); i < n; i++ {
		out = append(out, l.at(i))
	}
	return out, false
}

// Since is the kept events after id; see since.
func (l *Log) Since(id string) ([]Event, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.since(id)
}

// Subscription receives events as they are published. C is closed when the subscriber
// fell behind by more than its buffer, or on Cancel.
type Subscription struct {
	C    chan Event
	done chan struct{}
	log  *Log
}

// Done is closed when the subscription ends, as C is: for a writer blocked on a client
// that stopped reading, which never gets to see C closed.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// end closes the subscription; l.mu held, s still in l.subs (or never added).
func (s *Subscription) end() {
	delete(s.log.subs, s)
	close(s.C)
	close(s.done)
}

// subscriberBuffer is how many events a subscriber may be behind before it is dropped.
const subscriberBuffer = 256

// Subscribe returns what a subscriber resuming after id gets first (the events after it,
// or a Reset event when they are gone) and, atomically with them, a subscription to
// every event after those. After Close the subscription is closed at once.
func (l *Log) Subscribe(id string) (first []Event, s *Subscription) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if id != "" {
		var reset bool
		if first, reset = l.since(id); reset {
			first = []Event{l.resetEvent()}
		}
	}
	s = &Subscription{C: make(chan Event, subscriberBuffer), done: make(chan struct{}), log: l}
	if l.closed {
		s.end()
		return first, s
	}
	l.subs[s] = struct{}{}
	return first, s
}

// Close ends every subscription, and those made after it: a server shutting down must
// not wait for its streams.
func (l *Log) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for s := range l.subs {
		s.end()
	}
}

// Cancel ends the subscription.
func (s *Subscription) Cancel() {
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	if _, ok := s.log.subs[s]; ok {
		s.end()
	}
}

// Stats is what the metrics show of the feed.
type Stats struct {
	// Changed counts tag.changed events; Dropped, subscribers dropped for falling behind.
	Changed, Dropped uint64
	// Subscribers is how many subscriptions are open.
	Subscribers int
}

// Stats reads the feed's counters.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{Changed: l.changed, Dropped: l.dropped, Subscribers: len(l.subs)}
}

// SinceOrReset is Since for a reader that is to be told of a reset: the events after id,
// or a Reset event alone.
func (l *Log) SinceOrReset(id string) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out, reset := l.since(id)
	if reset {
		return []Event{l.resetEvent()}
	}
	return out
}

// resetEvent tells a subscriber it resumes from now: its id is the last event's, so that
// resuming from it gives what follows. l.mu held.
func (l *Log) resetEvent() Event {
	return Event{ID: l.epoch + "-" + fmt.Sprintf("%012d", l.seq), Type: Reset, Time: time.Now().UTC().Format(time.RFC3339)}
}

// Last is the newest event's id ("" before the first): where a reader that has seen
// everything resumes.
func (l *Log) Last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seq == 0 {
		return ""
	}
	return l.epoch + "-" + fmt.Sprintf("%012d", l.seq)
}

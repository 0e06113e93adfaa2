// Package feed is regcache's change feed: the events it records when it learns that a tag
// points somewhere new, kept in a bounded log that subscribers read live or resume from.
package feed

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
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
	// at is when the change was seen (Time, to the millisecond): with a fleet, it tells a
	// late publish of an older change from a newer one (publishScript). Publish sets it
	// to its call's time when the caller did not.
	at time.Time
}

// Log keeps the last events in id order and hands new ones to subscribers. Ids are
// "<13-digit milliseconds>-<12-digit sequence>", fixed-width so that they sort as they
// were emitted. Alone, a log numbers its events itself from the process's start, so an id
// from before a restart is told apart and answered with a reset; with a Fleet attached,
// an event's id is its Redis stream entry's, the same on every replica and across
// restarts, and ids need not be contiguous. An event a replica of a fleet keeps alone
// (Redis failing) takes an id in a range of sequences of its own, which no stream entry
// reaches (localBase).
type Log struct {
	mu    sync.Mutex
	size  int
	ring  []kept // up to size events, oldest at start, ids increasing
	start int
	// floor is the newest id known to be gone (evicted, trimmed from the fleet's stream,
	// or older than what this log started with): a resumer from an older id may have
	// missed events. newest is the newest id this log knows (an event's, or the floor).
	floor, newest eventID
	subs          map[*Subscription]struct{}
	// notify are called with each event as it is kept, in order, under the log's lock:
	// they must not block (webhook queues take or count a drop).
	notify []func(Event)
	closed bool // no more subscribers: the server is shutting down
	// fleet, when attached, is where Publish sends events (they come back through its
	// reader, with the fleet's ids).
	fleet atomic.Pointer[Fleet]
	// block is this log's part of the local range: the ids of the events it keeps alone
	// have sequences from localBase+block*localBlock.
	block uint64
	// changed, created and deleted count the events of each type this log delivered live;
	// dropped, subscribers dropped for falling behind; unshared, events kept here alone
	// because the fleet's Redis failed.
	changed, created, deleted, dropped, unshared uint64
}

// kept is an event with its parsed id.
type kept struct {
	id eventID
	e  Event
}

// NewLog keeps size events (DefaultLogSize for 0).
func NewLog(size int) *Log {
	if size <= 0 {
		size = DefaultLogSize
	}
	start := eventID{ms: uint64(time.Now().UnixMilli())}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &Log{size: size, floor: start, newest: start, subs: map[*Subscription]struct{}{},
		block: binary.BigEndian.Uint64(b[:]) % localBlocks}
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
		at:             m.At,
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

// Publish records e. Alone, the log gives it the next id, keeps it and hands it to every
// subscriber that keeps up (one that does not is dropped: its last id still resumes it),
// and returns it with its id. With a fleet attached, e is queued for Redis and returned
// without an id: it arrives, with the fleet's id, through the fleet's reader like every
// other replica's events (or here alone, if Redis fails).
func (l *Log) Publish(e Event) Event {
	if e.at.IsZero() {
		e.at = time.Now()
	}
	if f := l.fleet.Load(); f != nil {
		if !f.enqueue(e) {
			f.keepLocal(e) // Redis is too slow to keep up: not a reason to block or lose it
		}
		return e
	}
	return l.keepLocal(e, false)
}

// keepLocal gives e the id after the newest this log knows and keeps it; unshared counts
// it as one that the fleet's Redis did not take, whose id is taken from this log's local
// block: a stream id another replica gives a fleet event never equals it, so a client
// that brings it there is told of a reset rather than resumed past an event it never got.
func (l *Log) keepLocal(e Event, unshared bool) Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	id := l.newest.next()
	if unshared {
		l.unshared++
		id = l.nextLocal()
	}
	e.ID = id.String()
	l.add(id, e, true)
	return e
}

// nextLocal is the smallest id after the newest in this log's local block; l.mu held.
func (l *Log) nextLocal() eventID {
	first := localBase + l.block*localBlock
	last := first + localBlock - 1
	switch n := l.newest; {
	case n.seq < first:
		return eventID{n.ms, first}
	case n.seq < last:
		return eventID{n.ms, n.seq + 1}
	default:
		return eventID{n.ms + 1, first}
	}
}

// foreign reports whether p is an id another replica gave an event it kept alone: no log
// here holds that event, and this replica's reader never reaches p. This log's floor and
// newest are its own whatever their range (addShared raises them past a local id).
// l.mu held.
func (l *Log) foreign(p eventID) bool {
	return p.seq >= localBase && (p.seq-localBase)/localBlock != l.block && p != l.floor && p != l.newest
}

// add keeps e, whose id is newer than any kept, and when live hands it on; l.mu held.
func (l *Log) add(id eventID, e Event, live bool) {
	if len(l.ring) < l.size {
		l.ring = append(l.ring, kept{id, e})
	} else {
		// Evicted: resuming from before it is a reset. The floor may be past it already
		// (raiseFloor, addShared) and must stay there.
		if evicted := l.ring[l.start].id; l.floor.less(evicted) {
			l.floor = evicted
		}
		l.ring[l.start] = kept{id, e}
		l.start = (l.start + 1) % l.size
	}
	l.newest = id
	if live {
		l.deliver(e)
	}
}

// deliver counts e and hands it to the listeners and subscribers; l.mu held.
func (l *Log) deliver(e Event) {
	switch e.Type {
	case TagChanged:
		l.changed++
	case TagCreated:
		l.created++
	case TagDeleted:
		l.deleted++
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
}

// addShared keeps an event from the fleet's stream, with its stream id, and hands it on.
// One that does not sort after the newest id known (possible only after events kept here
// alone while Redis failed, which took ids after the last fleet id seen) is handed on but
// not kept, and raises the floor past everything: a resumer from any id up to now, which
// could not be given it in order, gets a reset rather than a gap.
func (l *Log) addShared(id eventID, e Event) {
	e.ID = id.String()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.newest.less(id) {
		l.floor = l.newest.next()
		l.newest = l.floor
		l.deliver(e)
		return
	}
	l.add(id, e, true)
}

// raiseFloor records that the events up to id are gone (trimmed from the fleet's stream
// before this log saw them).
func (l *Log) raiseFloor(id eventID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.floor.less(id) {
		l.floor = id
	}
	if l.newest.less(l.floor) {
		l.newest = l.floor
	}
}

// load starts the log from the fleet's history: events (oldest first) are kept without
// being handed on, and floor is the newest id known to be gone. It is called before the
// log is used; should it hold events already, only newer ones are added.
func (l *Log) load(events []kept, floor eventID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ring) == 0 {
		l.floor, l.newest = floor, floor
	}
	for _, k := range events {
		if l.newest.less(k.id) {
			k.e.ID = k.id.String()
			l.add(k.id, k.e, false)
		}
	}
}

// bounds is the log's floor and newest id.
func (l *Log) bounds() (floor, newest eventID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.floor, l.newest
}

// Notify has fn called with every event kept from now on, in order. fn runs under the
// log's lock and must not block. With a fleet, fn sees every event of the fleet on every
// replica: a webhook delivered once per fleet reads a Group instead.
func (l *Log) Notify(fn func(Event)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.notify = append(l.notify, fn)
}

// at is the i-th kept event, oldest first; l.mu held.
func (l *Log) at(i int) kept { return l.ring[(l.start+i)%len(l.ring)] }

// since is the kept events after id (all of them for ""); reset is true when id is not
// one this log can resume from: malformed, newer than any it knows, older than its floor
// (the events right after it are gone, or it is from before a restart), or another
// replica's local id. l.mu held.
func (l *Log) since(id string) (out []Event, reset bool) {
	n := len(l.ring)
	first := 0
	if id != "" {
		p, ok := parseID(id)
		if !ok || p.less(l.floor) || l.newest.less(p) || l.foreign(p) {
			return nil, true
		}
		first = sort.Search(n, func(i int) bool { return p.less(l.at(i).id) })
	}
	for i := first; i < n; i++ {
		out = append(out, l.at(i).e)
	}
	return out, false
}

// catchUpWait bounds how long a resumer waits for this replica's reader to reach an id
// newer than it knows (catchUp).
const catchUpWait = time.Second

// catchUp waits, with a fleet, until the log knows id or catchUpWait has passed: a
// client that reconnects to another replica behind a load balancer may bring an id that
// this replica's reader is a few milliseconds from reaching, which is not a reason to
// reset it. Another replica's local id is never reached: it is reset at once.
func (l *Log) catchUp(id string) {
	p, ok := parseID(id)
	if !ok || l.fleet.Load() == nil {
		return
	}
	l.mu.Lock()
	foreign := l.foreign(p)
	l.mu.Unlock()
	if foreign {
		return
	}
	for deadline := time.Now().Add(catchUpWait); ; time.Sleep(5 * time.Millisecond) {
		l.mu.Lock()
		behind := l.newest.less(p)
		l.mu.Unlock()
		if !behind || time.Now().After(deadline) {
			return
		}
	}
}

// Since is the kept events after id; see since.
func (l *Log) Since(id string) ([]Event, bool) {
	l.catchUp(id)
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.since(id)
}

// Subscription receives events as they are published. C is closed when the subscriber
// fell behind by more than its buffer, or on Cancel.
type Subscription struct {
	// Start is the id that C's events follow (the newest the log knew when it subscribed;
	// with no event yet, one that resumes from the log's start): a subscriber that came
	// without an id resumes from it, and gets what was published while it was away.
	Start string
	C     chan Event
	done  chan struct{}
	log   *Log
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
	l.catchUp(id)
	l.mu.Lock()
	defer l.mu.Unlock()
	if id != "" {
		var reset bool
		if first, reset = l.since(id); reset {
			first = []Event{l.resetEvent()}
		}
	}
	s = &Subscription{Start: l.newest.String(), C: make(chan Event, subscriberBuffer), done: make(chan struct{}), log: l}
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
	// Changed, Created and Deleted count the events of each type delivered live (with a
	// fleet, every replica counts every event of the fleet); Dropped, subscribers dropped
	// for falling behind.
	Changed, Created, Deleted, Dropped uint64
	// Unshared counts events this replica kept alone because the fleet's Redis failed:
	// the other replicas' streams and the fleet's webhooks do not have them.
	Unshared uint64
	// Subscribers is how many subscriptions are open.
	Subscribers int
}

// Stats reads the feed's counters.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{Changed: l.changed, Created: l.created, Deleted: l.deleted, Dropped: l.dropped,
		Unshared: l.unshared, Subscribers: len(l.subs)}
}

// SinceOrReset is Since for a reader that is to be told of a reset: the events after id,
// or a Reset event alone.
func (l *Log) SinceOrReset(id string) []Event {
	l.catchUp(id)
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
	return Event{ID: l.newest.String(), Type: Reset, Time: time.Now().UTC().Format(time.RFC3339)}
}

// Last is the newest event's id ("" before the first): where a reader that has seen
// everything resumes.
func (l *Log) Last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ring) == 0 {
		return ""
	}
	return l.newest.String()
}

// Newest is the last n events kept, newest first: what the status page shows of the feed.
func (l *Log) Newest(n int) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	n = min(n, len(l.ring))
	out := make([]Event, 0, n)
	for i := len(l.ring) - 1; i >= len(l.ring)-n; i-- {
		out = append(out, l.at(i).e)
	}
	return out
}

// eventID is an id parsed: milliseconds and a sequence within them.
type eventID struct{ ms, seq uint64 }

// maxSeq is the largest sequence the 12-digit form holds.
const maxSeq = 999_999_999_999

// The local range: sequences from localBase up, which no Redis stream id reaches (that
// would take 9×10^11 entries in one millisecond), split into localBlocks blocks of
// localBlock; each log takes one block at random, so that two replicas that keep events
// alone at once, from the same newest fleet id, give them different ids (but for one
// chance in localBlocks).
const (
	localBase   = 900_000_000_000
	localBlock  = 1_000_000
	localBlocks = (maxSeq - localBase + 1) / localBlock
)

// parseID reads the fixed-width form, and nothing else.
func parseID(s string) (eventID, bool) {
	if len(s) != 26 || s[13] != '-' {
		return eventID{}, false
	}
	ms, err1 := strconv.ParseUint(s[:13], 10, 64)
	seq, err2 := strconv.ParseUint(s[14:], 10, 64)
	return eventID{ms, seq}, err1 == nil && err2 == nil
}

// String is the fixed-width form.
func (i eventID) String() string { return fmt.Sprintf("%013d-%012d", i.ms, i.seq) }

func (i eventID) less(j eventID) bool { return i.ms < j.ms || (i.ms == j.ms && i.seq < j.seq) }

// next is the smallest id after i.
func (i eventID) next() eventID {
	if i.seq >= maxSeq {
		return eventID{ms: i.ms + 1}
	}
	return eventID{i.ms, i.seq + 1}
}

// prev is the largest id before i outside the local range (the zero id for itself): the
// floor below a stream entry, which a log hands out (a reset's id) and must not take for
// another replica's.
func (i eventID) prev() eventID {
	switch {
	case i.seq > 0:
		return eventID{i.ms, i.seq - 1}
	case i.ms > 0:
		return eventID{i.ms - 1, localBase - 1}
	}
	return i
}

package feed

// The fleet's feed: with the Redis/Valkey tier, the replicas share one change feed, a
// Redis stream. A replica publishes what it saw with one script that drops a change
// another replica published already, or one older than the fleet's last word on the
// image; every replica reads the stream into its Log, so an
// event has one id (its stream entry's) everywhere and across restarts. Webhooks read the
// stream through consumer groups (group.go), so each delivery happens once per fleet.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"regcache/cache"
)

// Timings of the fleet's feed.
const (
	// stateTTL is how long the fleet remembers where a tag last pointed, to drop the same
	// change seen by two replicas.
	stateTTL = 30 * 24 * time.Hour
	// publishQueue is how many events may wait for Redis; past that, they are kept here
	// alone (as when Redis fails) rather than block the cache's miss path.
	publishQueue = 1024
	// publishRetry: after a failed publish, events are kept here alone for this long
	// without trying, so that a Redis that hangs costs one timeout per interval.
	publishRetry = time.Second
	// readBlock is how long one XREAD waits for new entries; readCount the most it takes.
	readBlock = 2 * time.Second
	readCount = 1000
	// loadPage is how many entries one call reads of the history loaded at start: a few
	// hundred KB, which a slow link carries within one call's timeout.
	loadPage = 1000
	// readRetryMin and readRetryMax bound the reader's backoff while Redis fails.
	readRetryMin = 100 * time.Millisecond
	readRetryMax = 5 * time.Second
	logInterval  = 30 * time.Second
)

// Fleet is a Log's link to the fleet's stream (NewFleet).
type Fleet struct {
	log      *Log
	rdb      *redis.Client
	zl       *zap.Logger
	opTime   time.Duration
	maxLen   int
	consumer string // this process's name in consumer groups
	// keys: the stream, the counter that numbers its entries, and the prefixes of the
	// per-image last state and of the groups' bookkeeping.
	stream, seqKey, statePrefix, groupPrefix string

	queue  chan Event
	queued atomic.Int64    // events queued and not yet published or kept (tests wait on it)
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	// busy counts the publisher and the groups' Run loops, which finish their Redis calls
	// before the client closes; reading, the reader (which the client's closing ends).
	busy, reading sync.WaitGroup
	mu            sync.Mutex
	closed        bool
	groups        []*Group

	// The publisher's state (its goroutine only).
	failedAt, pubLogged time.Time
	// The reader's state (its goroutine only): the last stream entry read, and its
	// number (0: not known).
	last       string
	lastSeq    uint64
	readLogged time.Time
	// at is last as of the reader's last batch, for other goroutines: where a group made
	// for the first time starts (Group.Run).
	at atomic.Pointer[string]
}

// publishScript adds an event to the stream unless the fleet knows better: KEYS state,
// stream, counter; ARGV the image's new state (digest, "-" for a deletion, "" for no
// check), when the change was seen (Unix ms), the state's TTL in ms, the stream's bound,
// the event (JSON). It answers the entry's id, or nil for an event not published.
//
// The state key holds what the fleet published last for the image and when that was seen
// ("<state> <ms>"; a bare state, as older versions wrote it, counts as seen at 0). The
// rule, which keeps the feed's last word on the newest digest seen:
//   - no state (new image, expired, evicted): publish;
//   - seen no later than the state (a replica that published late, or saw an older
//     answer): drop it, whatever its previous digest: publishing it would leave the
//     feed's last word on a digest the fleet saw replaced since (A→B published after
//     B→C; or A→B after A→B→A);
//   - seen later, same state: a repeat (another replica saw the change too): drop it, and
//     keep its time, which is newer knowledge of the same state;
//   - seen later, another state: a real move, published; when its replica missed a move
//     (its previous digest is not the fleet's last), its previousDigest becomes the
//     fleet's last digest, so that each event follows the one before.
//
// Times are the replicas' clocks: a move seen within their skew of the previous one may be
// taken for a stale one, which NTP makes a matter of milliseconds.
var publishScript = redis.NewScript(`
if ARGV[1] ~= '' then
  local at = tonumber(ARGV[2])
  local v = redis.call('GET', KEYS[1])
  if v then
    local was, wasAt = string.match(v, '^(.*) (%d+)$')
    if not was then was, wasAt = v, '0' end
    if at <= tonumber(wasAt) then return false end
    if was == ARGV[1] then
      redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
      return false
    end
    if was ~= '-' then
      local e = cjson.decode(ARGV[5])
      if e.type == 'tag.changed' and e.previousDigest ~= was then
        e.previousDigest = was
        ARGV[5] = cjson.encode(e)
      end
    end
  end
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
end
local seq = redis.call('INCR', KEYS[3])
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'seq', seq, 'event', ARGV[5])
`)

// NewFleet links l to the fleet's stream in cfg's Redis and starts its reader: it loads
// the newest entries (up to l's size) as l's history, then adds each new one as it comes.
// From then on l.Publish sends events to the stream. Call it before l is used; Close
// stops it.
func NewFleet(l *Log, cfg cache.RedisConfig, zl *zap.Logger) *Fleet {
	cfg = cfg.WithDefaults()
	if zl == nil {
		zl = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Fleet{
		log: l, rdb: cache.NewRedisClient(cfg), zl: zl, opTime: cfg.OpTimeout, maxLen: l.size,
		consumer: consumerName(),
		stream:   cfg.KeyPrefix + "events", seqKey: cfg.KeyPrefix + "events:seq",
		statePrefix: cfg.KeyPrefix + "events:state:", groupPrefix: cfg.KeyPrefix + "events:group:",
		queue: make(chan Event, publishQueue), ctx: ctx, cancel: cancel,
	}
	if err := f.load(); err != nil {
		// Read what comes from now on, by Redis's clock when it answers (the next entry's id
		// is at least its now: this one's clock may be ahead); an id from before this start
		// gets a reset.
		floor, _ := l.bounds()
		ctx, cancel := context.WithTimeout(context.Background(), f.opTime)
		if now, err := f.rdb.Time(ctx).Result(); err == nil {
			floor = eventID{ms: uint64(now.UnixMilli())}.prev()
			l.load(nil, floor)
		}
		cancel()
		f.last = floor.stream()
		zl.Warn("change feed: a Redis call failed; it starts without the fleet's history (ids from before this start get feed.reset)", zap.Error(err))
	}
	start := f.last
	f.at.Store(&start)
	l.fleet.Store(f)
	f.busy.Add(1)
	go f.publisher()
	f.reading.Add(1)
	go f.reader()
	return f
}

// load reads the newest entries into the log, a page at a time; the one before them, if
// any, is its floor. A page that times out is tried again with twice the time; one that
// still fails ends the history there (older ids get a reset), or, for the first, fails
// the load.
func (f *Fleet) load() error {
	timeout := max(time.Second, 4*f.opTime)
	page := func(end string, n int) ([]redis.XMessage, error) {
		var err error
		for _, t := range []time.Duration{timeout, 2 * timeout} {
			ctx, cancel := context.WithTimeout(context.Background(), t)
			var msgs []redis.XMessage
			msgs, err = f.rdb.WithTimeout(t).XRevRangeN(ctx, f.stream, end, "-", int64(n)).Result()
			cancel()
			var ne net.Error
			if err == nil || !(errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) {
				return msgs, err
			}
		}
		return nil, err
	}
	var msgs []redis.XMessage
	for end, want := "+", f.maxLen+1; len(msgs) < want; {
		n := min(loadPage, want-len(msgs))
		got, err := page(end, n)
		if err != nil && len(msgs) == 0 {
			return err
		}
		msgs = append(msgs, got...)
		if err != nil || len(got) < n {
			break
		}
		end = "(" + got[len(got)-1].ID
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	rdb := f.rdb.WithTimeout(timeout)
	var floor eventID
	switch {
	case len(msgs) > f.maxLen:
		floor, _ = streamID(msgs[f.maxLen].ID)
		msgs = msgs[:f.maxLen]
	case len(msgs) > 0:
		// Nothing trimmed, but an id older than the stream's first entry may be from a
		// stream that Redis lost: a reset, not a silent gap.
		oldest, _ := streamID(msgs[len(msgs)-1].ID)
		floor = oldest.prev()
	default:
		now, err := rdb.Time(ctx).Result()
		if err != nil {
			return err
		}
		// The next entry's id is at least Redis's now.
		floor = eventID{ms: uint64(now.UnixMilli())}.prev()
	}
	events := make([]kept, 0, len(msgs))
	for i := len(msgs) - 1; i >= 0; i-- {
		if id, e, ok := decodeEntry(msgs[i].ID, msgs[i].Values["event"]); ok {
			events = append(events, kept{id, e})
		}
	}
	f.log.load(events, floor)
	f.last = floor.stream()
	if len(msgs) > 0 {
		f.last = msgs[0].ID
		f.lastSeq, _ = strconv.ParseUint(fmt.Sprint(msgs[0].Values["seq"]), 10, 64)
	}
	return nil
}

// decodeEntry reads a stream entry: its id in the fixed-width form, and its event.
func decodeEntry(sid string, data any) (eventID, Event, bool) {
	id, ok := streamID(sid)
	text, isText := data.(string)
	var e Event
	if !ok || !isText || json.Unmarshal([]byte(text), &e) != nil || e.Type == "" {
		return id, e, false
	}
	e.ID = id.String()
	return id, e, true
}

// streamID parses a Redis stream id ("1733150000000-0").
func streamID(s string) (eventID, bool) {
	msText, seqText, ok := strings.Cut(s, "-")
	ms, err1 := strconv.ParseUint(msText, 10, 64)
	seq, err2 := strconv.ParseUint(seqText, 10, 64)
	if !ok || err1 != nil || err2 != nil || ms > 9_999_999_999_999 || seq > maxSeq {
		return eventID{}, false
	}
	return eventID{ms, seq}, true
}

// stream is i as a Redis stream id.
func (i eventID) stream() string {
	return strconv.FormatUint(i.ms, 10) + "-" + strconv.FormatUint(i.seq, 10)
}

// enqueue hands e to the publisher; false when it cannot wait (queue full, or closed).
func (f *Fleet) enqueue(e Event) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.queued.Add(1)
	select {
	case f.queue <- e:
		return true
	default:
		f.queued.Add(-1)
		return false
	}
}

// publisher sends the queued events to Redis in order, one script call each: the cache's
// miss path, which records them, never waits for Redis. At Close it sends what is left
// within one timeout.
func (f *Fleet) publisher() {
	defer f.busy.Done()
	for {
		select {
		case e := <-f.queue:
			f.publish(context.Background(), e)
		case <-f.ctx.Done():
			ctx, cancel := context.WithTimeout(context.Background(), f.opTime)
			defer cancel()
			for {
				select {
				case e := <-f.queue:
					f.publish(ctx, e)
				default:
					return
				}
			}
		}
	}
}

// publish sends e to the stream, or keeps it here alone when Redis fails.
func (f *Fleet) publish(parent context.Context, e Event) {
	defer f.queued.Add(-1)
	if !f.failedAt.IsZero() && time.Since(f.failedAt) < publishRetry {
		f.keepLocal(e)
		return
	}
	state := e.Digest
	if e.Type == TagDeleted {
		state = "-"
	}
	if e.Image == "" {
		state = "" // nothing to tell a repeat by
	}
	e.ID = "" // the stream entry's id is the event's
	if e.at.IsZero() {
		e.at = time.Now()
	}
	data, _ := json.Marshal(e)
	ctx, cancel := context.WithTimeout(parent, f.opTime)
	defer cancel()
	err := publishScript.Run(ctx, f.rdb, []string{f.statePrefix + e.Image, f.stream, f.seqKey},
		state, e.at.UnixMilli(), stateTTL.Milliseconds(), f.maxLen, data).Err()
	if err != nil && !errors.Is(err, redis.Nil) { // nil: another replica published it
		f.failedAt = time.Now()
		f.keepLocal(e)
		if due(&f.pubLogged) {
			f.zl.Warn("change feed: a Redis call failed; events are kept on this replica alone (logged once per 30s; regcache_events_unshared_total counts them)",
				zap.Error(err))
		}
		return
	}
	if !f.failedAt.IsZero() {
		f.failedAt = time.Time{}
		f.zl.Info("change feed: Redis answers again; events are shared again")
	}
}

// keepLocal keeps e on this replica alone, for its streams and its webhooks.
func (f *Fleet) keepLocal(e Event) {
	e = f.log.keepLocal(e, true)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, g := range f.groups {
		select {
		case g.local <- e:
		default:
			g.dropped.Add(1)
		}
	}
}

// reader adds the stream's new entries to the log as they come, from the last one read,
// reconnecting with backoff while Redis fails.
func (f *Fleet) reader() {
	defer f.reading.Done()
	wait := readRetryMin
	for f.ctx.Err() == nil {
		res, err := f.rdb.XRead(f.ctx, &redis.XReadArgs{Streams: []string{f.stream, f.last}, Count: readCount, Block: readBlock}).Result()
		if errors.Is(err, redis.Nil) {
			continue // nothing new within readBlock
		}
		if err != nil {
			if f.ctx.Err() != nil {
				return
			}
			if due(&f.readLogged) {
				f.zl.Warn("change feed: a Redis call failed; the fleet's events are read again once it answers (logged once per 30s)", zap.Error(err))
			}
			select {
			case <-time.After(wait):
			case <-f.ctx.Done():
				return
			}
			wait = min(2*wait, readRetryMax)
			continue
		}
		wait = readRetryMin
		for _, s := range res {
			for _, m := range s.Messages {
				f.take(m)
			}
		}
		last := f.last
		f.at.Store(&last)
		f.wakeGroups()
	}
}

// take adds one entry read from the stream to the log. Entries are numbered: one whose
// number does not follow the last read's means entries were trimmed before this replica
// read them (it was disconnected), so the log's floor rises to just before it and a
// resumer from before the gap gets a reset. A number that starts again at 1 is a stream
// that Redis lost and began anew.
func (f *Fleet) take(m redis.XMessage) {
	f.last = m.ID
	id, e, ok := decodeEntry(m.ID, m.Values["event"])
	if seq, err := strconv.ParseUint(fmt.Sprint(m.Values["seq"]), 10, 64); err == nil {
		want := f.lastSeq + 1
		if seq <= f.lastSeq {
			want = 1
		}
		if f.lastSeq != 0 && seq != want {
			if at, valid := streamID(m.ID); valid {
				f.log.raiseFloor(at.prev())
			}
			f.zl.Warn("change-feed events were trimmed from the fleet's stream before this replica read them; resumers from before them get feed.reset",
				zap.Uint64("missed", seq-min(seq, want)))
		}
		f.lastSeq = seq
	}
	if ok {
		f.log.addShared(id, e)
	}
}

// wakeGroups tells the groups' Run loops that there are new entries.
func (f *Fleet) wakeGroups() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, g := range f.groups {
		g.signal()
	}
}

// Close stops publishing (what is queued is sent within one timeout) and reading, and
// closes the client. The log keeps what it has; events published after Close are kept
// on this replica alone.
func (f *Fleet) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	f.mu.Unlock()
	f.cancel()
	f.busy.Wait()
	_ = f.rdb.Close() // ends the reader's blocked XREAD
	f.reading.Wait()
}

// due reports whether a line logged at *last is to be logged again, and if so counts now
// as its time. Each caller's *last belongs to one goroutine.
func due(last *time.Time) bool {
	if time.Since(*last) < logInterval {
		return false
	}
	*last = time.Now()
	return true
}

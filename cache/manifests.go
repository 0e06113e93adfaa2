package cache

// Manifests by tag: the hit path, and on a miss the tag's three states (fresh without the
// body asked for, unknown, stale) over the one road of load.go, with revalidation by HEAD
// and stale answers while upstream fails (without asking it again for a backoff after
// each failure: backoff.go).

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"regcache/internal/budget"
	"regcache/upstream"
)

// Request is one manifest lookup. The proxy fills it once per client request; Hit answers
// it from memory when it can, and on a miss Load goes on from what Hit found.
type Request struct {
	Origin *Origin
	// Repo and Ref (a tag or a digest) may alias the caller's request buffers: they are
	// copied before anything that outlives the call keeps them.
	Repo, Ref string
	// WantBody is false when only the descriptor is needed (a client HEAD): upstream is
	// then never asked with GET for it unless upstream's HEAD answers lack a digest.
	WantBody bool
	// Now is the request's one clock read, which every freshness decision about what this
	// replica holds takes. Only a miss reads the clock again: to stamp what upstream
	// answered with when it answered (a slow upstream must not hand back entries already
	// old), and to judge another replica's entry against the clock as it is read (a fleet
	// wait may be long, and a request's old clock read would take fresh entries for skew).
	Now time.Time
	// Background is whose lookup this is when no client waits for it (refresh-ahead, a
	// watch): it takes the upstream's budget where it would ask upstream, and is refused
	// (budget.ErrSpent, serving nothing, changing nothing) when the budget is spent. Zero
	// (budget.Client) is a client's, which no budget refuses.
	Background budget.Reason

	looked bool      // Hit has run
	held   *TagEntry // the tag's entry Hit found: past its TTL, or without the body wanted
	// after, for a refresh, is when the entry being refreshed was fetched: only an entry
	// fetched later answers it from memory or the fleet tier.
	after time.Time
}

// Manifest resolves ref in repo on o, for a caller that has not read the clock.
func (c *Cache) Manifest(ctx context.Context, o *Origin, repo, ref string, wantBody bool) (Answer, error) {
	r := Request{Origin: o, Repo: repo, Ref: ref, WantBody: wantBody, Now: time.Now()}
	if a, ok := c.Hit(&r); ok {
		return a, nil
	}
	return c.Load(ctx, r)
}

// Hit answers from memory alone, never asking upstream: a fresh tag, or a manifest by
// digest, with its body when wanted. ok is false when anything more is needed; r then
// holds what memory had, for Load. Only what was validated and fetched is ever stored, so
// a caller may try Hit before it validates the request's names: an invalid name cannot
// match.
func (c *Cache) Hit(r *Request) (Answer, bool) {
	r.looked = true
	up := r.Origin.Registry.Name()
	if strings.IndexByte(r.Ref, ':') >= 0 {
		// A digest (tags cannot contain ':'); its entry never goes stale.
		k := getKey('m', up, r.Repo, r.Ref)
		e := c.store.manifest(k.String())
		k.release()
		if e == nil || (r.WantBody && e.Body == nil) {
			return Answer{}, false
		}
		return answer(e.Descriptor, e.Body, r.WantBody, Hit, time.Time{}), true
	}
	k := getKey('t', up, r.Repo, r.Ref)
	te := c.store.tag(k.String())
	k.release()
	r.held = te
	if te == nil || r.Now.Sub(te.FetchedAt) >= te.TTL {
		return Answer{}, false
	}
	if r.Background == budget.Client && !te.asked.Load() {
		te.asked.Store(true) // asked in its window: refresh it ahead (refresh.go)
	}
	if !r.WantBody {
		// A HEAD named the digest; a body fetched since (by digest, or by a GET of the tag)
		// says what its type and size really are.
		return answer(te.descriptor(), nil, false, Hit, te.FetchedAt), true
	}
	if e := c.cachedBody(up, r.Repo, te.Digest); e != nil {
		// The body's own descriptor: it was verified, the tag entry's type and size were not.
		return answer(e.Descriptor, e.Body, true, Hit, te.FetchedAt), true
	}
	return Answer{}, false
}

// Load answers what Hit could not, going on from what Hit found (it runs Hit first when
// the caller did not).
func (c *Cache) Load(ctx context.Context, r Request) (Answer, error) {
	if !r.looked {
		if a, ok := c.Hit(&r); ok {
			return a, nil
		}
	}
	// Past here upstream may be asked: keep our own copies of the caller's strings.
	r.Repo, r.Ref = strings.Clone(r.Repo), strings.Clone(r.Ref)
	if strings.IndexByte(r.Ref, ':') >= 0 {
		if d, err := digest.Parse(r.Ref); err == nil {
			e, err := c.manifestByDigest(ctx, r.Origin, r.Repo, d, r.WantBody, r.Background)
			if err != nil {
				return Answer{}, err
			}
			return answer(e.Descriptor, e.Body, r.WantBody, Miss, time.Time{}), nil
		}
	}
	return c.byTag(ctx, r)
}

func (c *Cache) byTag(ctx context.Context, r Request) (Answer, error) {
	o := r.Origin
	te := r.held
	if te != nil && r.Now.Sub(te.FetchedAt) > te.TTL+c.cfg.MaxStale {
		te = nil // past serving even as stale
	}
	switch {
	case te == nil:
		res, err := c.resolveTag(ctx, r)
		if err != nil {
			return Answer{}, err
		}
		return c.complete(ctx, r, res, Miss)
	case r.Now.Sub(te.FetchedAt) < te.TTL:
		// Fresh, but the body is not here (Hit looked): one GET by digest.
		a, err := c.bodyByDigest(ctx, r, te.Digest, Miss, te.FetchedAt)
		return c.orPrevious(r, a, err, te.Previous, te.FetchedAt)
	}

	// Stale, and upstream failed to revalidate it a moment ago: served as it is, without
	// asking again, until the backoff passes (backoff.go).
	if b := te.retry.holding(r.Now); b != nil {
		o.backoffServed.Add(1)
		return c.stale(ctx, r, te, b.err)
	}

	// Stale: one HEAD tells whether the tag still points where it did. A client waits for
	// it at most revalidate_wait; the HEAD itself goes on and refreshes the cache.
	wctx, cancel := context.WithTimeout(ctx, c.cfg.RevalidateWait)
	defer cancel()
	head := r
	head.WantBody = false
	res, err := c.resolveTag(wctx, head)
	switch {
	case err == nil && res.tag.Digest == te.Digest:
		// Unchanged, but the body may never have been fetched (the tag moved while GETs were
		// refused): then, as on the fresh path, the manifest it pointed to before stands in.
		a, err := c.complete(ctx, r, res, Revalidated)
		return c.orPrevious(r, a, err, te.Previous, te.FetchedAt)
	case err == nil:
		a, err := c.complete(ctx, r, res, Miss)
		return c.orPrevious(r, a, err, te.Descriptor, te.FetchedAt)
	case ctx.Err() != nil:
		return Answer{}, ctx.Err() // the client went away
	case errors.Is(err, context.DeadlineExceeded) || serveStaleOn(err):
		c.log.Warn("serving stale",
			zap.String("upstream", o.Registry.Name()), zap.String("repository", r.Repo), zap.String("reference", r.Ref),
			zap.Duration("age", r.Now.Sub(te.FetchedAt)), zap.Error(err))
		return c.stale(ctx, r, te, nil)
	default:
		return Answer{}, err
	}
}

// stale answers with te, past its TTL, because upstream failed. held is the failure
// behind a backoff in force, when one is: a body not held here is then not fetched
// (upstream is not to be asked), and the answer is the manifest the tag pointed to before
// or that failure.
func (c *Cache) stale(ctx context.Context, r Request, te *TagEntry, held error) (Answer, error) {
	body := c.cachedBody(r.Origin.Registry.Name(), r.Repo, te.Digest)
	if held != nil && body == nil && r.WantBody {
		return c.orPrevious(r, Answer{}, held, te.Previous, te.FetchedAt)
	}
	a, err := c.complete(ctx, r, resolved{tag: te, body: body}, Stale)
	return c.orPrevious(r, a, err, te.Previous, te.FetchedAt)
}

// resolved is where a tag points, as stored: its entry, and its manifest's entry when the
// body is held.
type resolved struct {
	tag  *TagEntry
	body *ManifestEntry
}

// complete makes the answer for where a tag points, with the body when it is wanted: the
// one the lookup brought, or one upstream GET by digest.
func (c *Cache) complete(ctx context.Context, r Request, res resolved, st Status) (Answer, error) {
	at := res.tag.FetchedAt
	switch {
	case res.body != nil:
		// The body's own descriptor: verified, where the tag entry's may be a HEAD's claim.
		return answer(res.body.Descriptor, res.body.Body, r.WantBody, st, at), nil
	case !r.WantBody:
		return answer(res.tag.descriptor(), nil, false, st, at), nil
	}
	return c.bodyByDigest(ctx, r, res.tag.Digest, st, at)
}

// bodyByDigest answers a tag with the body of d, which memory does not hold.
func (c *Cache) bodyByDigest(ctx context.Context, r Request, d digest.Digest, st Status, at time.Time) (Answer, error) {
	e, err := c.manifestByDigest(ctx, r.Origin, r.Repo, d, true, r.Background)
	if err != nil {
		return Answer{}, err
	}
	if st != Stale {
		st = Miss // upstream was asked for this answer
	}
	return answer(e.Descriptor, e.Body, true, st, at), nil
}

// resolveTag asks where r's tag points now, coalesced per tag: the first caller decides
// between HEAD and GET, and a caller that needs a body the HEAD did not bring fetches it
// by digest afterwards.
func (c *Cache) resolveTag(ctx context.Context, r Request) (resolved, error) {
	up := r.Origin.Registry.Name()
	return load(ctx, &c.tagFlights, c.fleet, c.fleetWait(r.Origin),
		&tagLookup{c: c, r: r, up: up, mkey: tagKey(up, r.Repo, r.Ref), ttl: r.Origin.TTLFor(r.Ref)})
}

// tagLookup is a tag's miss, for load.
type tagLookup struct {
	c    *Cache
	r    Request
	up   string
	mkey string        // its memory key
	ttl  time.Duration // the tag's TTL
	// seen is the fleet's entry last read, fresh or not: where the tag pointed before, for
	// the entry the fetch writes (its Previous), even on a replica that never saw it.
	seen *TagEntry
	took time.Duration // how long upstream took to answer, for the refresh point
}

// key is also the fleet lock's name: <prefix>lock:tag:<upstream>/<repo>:<tag>.
func (l *tagLookup) key() string { return "tag:" + l.up + "/" + l.r.Repo + ":" + l.r.Ref }

func (l *tagLookup) waits() bool { return true }

func (l *tagLookup) background() bool { return l.r.Background != budget.Client }

func (l *tagLookup) memory() (resolved, bool, error) {
	// A flight for this tag that finished since the caller looked (a burst's straggler, or
	// a revalidation that just landed) has answered already: upstream must not be asked
	// twice.
	if te := l.c.store.tag(l.mkey); te != nil && l.r.Now.Sub(te.FetchedAt) < te.TTL && te.FetchedAt.After(l.r.after) {
		return resolved{tag: te, body: l.c.cachedBody(l.up, l.r.Repo, te.Digest)}, true, nil
	}
	return resolved{}, false, l.c.store.negative(negativeKey(l.up, l.r.Repo, l.r.Ref))
}

func (l *tagLookup) fleet() (resolved, bool) {
	c, now := l.c, time.Now()
	te := c.fleet.getTag(l.up, l.r.Repo, l.r.Ref, now)
	if te == nil {
		return resolved{}, false
	}
	l.seen = te
	if te.FetchedAt.After(now) {
		// A replica whose clock runs ahead (getTag refused more than a minute): fresh as of
		// now.
		te.FetchedAt = now
	}
	if now.Sub(te.FetchedAt) >= l.ttl || !te.FetchedAt.After(l.r.after) {
		return resolved{}, false // stale, or (for a refresh) the very entry being refreshed
	}
	// The entry names a digest; a verified body for it, here or shared, says what its
	// type and size are, as for upstream's HEADs.
	d, body, claim := c.claimed(l.up, l.r.Repo, te.Descriptor)
	if claim != nil {
		if e := c.fleet.getManifest(l.up, l.r.Repo, d.Digest); e != nil {
			body = c.putManifest(l.up, l.r.Repo, upstream.Manifest{Descriptor: e.Descriptor, Body: e.Body})
			d, claim = body.Descriptor, nil
		}
	}
	te = c.putTag(l.mkey, d, te.FetchedAt, l.ttl, te.Previous, claim)
	c.scheduleRefresh(l.r.Origin, l.mkey, l.r.Repo, l.r.Ref, te, 0)
	return resolved{tag: te, body: body}, true
}

func (l *tagLookup) fetch() (m upstream.Manifest, err error) {
	done, err := spend(l.r.Origin, l.r.Background, l.r.WantBody)
	if err != nil {
		return upstream.Manifest{}, err
	}
	defer func() { done(err) }()
	start := time.Now()
	defer func() { l.took = time.Since(start) }()
	if l.r.WantBody {
		return l.r.Origin.Registry.GetManifest(context.Background(), l.r.Repo, l.r.Ref)
	}
	return l.r.Origin.Registry.HeadManifest(context.Background(), l.r.Repo, l.r.Ref)
}

// store keeps where the tag points in both tiers. The manifest is shared before the tag
// entry, so a replica that finds the tag finds its body.
func (l *tagLookup) store(m upstream.Manifest) resolved {
	c := l.c
	d := m.Descriptor
	var body, claim *ManifestEntry
	if m.Body != nil {
		body = c.putManifest(l.up, l.r.Repo, m)
		c.fleet.setManifest(l.up, l.r.Repo, m)
	} else {
		// A HEAD names the digest; for a manifest whose body was verified, its size and
		// type are what that body showed, whatever this answer's Content-Length claims.
		// (A lie here would otherwise be every HEAD's answer until tag_ttl passes.)
		d, body, claim = c.claimed(l.up, l.r.Repo, d)
	}
	var prev upstream.Descriptor
	if l.seen != nil {
		prev = l.seen.Previous
		if l.seen.Digest != d.Digest {
			prev = l.seen.Descriptor
		}
	}
	// Where the tag pointed before this answer: the newer of this replica's entry and the
	// fleet's. A move another replica already recorded (and shared) is not this one's to
	// record again, however old this replica's own entry is.
	var was upstream.Descriptor
	old := c.store.tag(l.mkey)
	switch {
	case l.seen != nil && (old == nil || l.seen.FetchedAt.After(old.FetchedAt)):
		was = l.seen.Descriptor
	case old != nil:
		was = old.Descriptor
	}
	if e := l.movedBody(was, d); e != nil && body == nil {
		d, body, claim = e.Descriptor, e, nil
	}
	at := time.Now()
	te := c.putTag(l.mkey, d, at, l.ttl, prev, claim)
	c.fleet.setTag(l.up, l.r.Repo, l.r.Ref, te, l.ttl+c.cfg.MaxStale)
	c.scheduleRefresh(l.r.Origin, l.mkey, l.r.Repo, l.r.Ref, te, l.took)
	if was.Digest != "" && was.Digest != d.Digest && c.cfg.OnTagMove != nil {
		mv := TagMove{Upstream: l.up, Repository: l.r.Repo, Tag: l.r.Ref, From: was, To: d, At: at}
		if body != nil {
			mv.Body = body.Body
		}
		c.cfg.OnTagMove(mv)
	}
	return resolved{tag: te, body: body}
}

func (l *tagLookup) failed(err error) {
	c := l.c
	if c.remember(l.up, l.r.Repo, l.r.Ref, err) && upstream.KindOf(err) == upstream.KindNotFound {
		// The tag is gone upstream (this replica's answer or the fleet's): stop serving it.
		// A denial is not a deletion: the stale tag stays for when access returns.
		c.store.del(l.mkey)
		c.fleet.delTag(l.up, l.r.Repo, l.r.Ref)
		return
	}
	// The entry the failure is about: not one stored since the request read the clock.
	if te := c.store.tag(l.mkey); te != nil && !te.FetchedAt.After(l.r.Now) && serveStaleOn(err) {
		b := te.retry.fail(err, time.Now(), c.cfg.ErrorBackoff, backoffTTL(l.r.Origin, l.r.Ref))
		c.logBackoff(l.up, l.r.Repo, l.r.Ref, b, err)
	}
}

// putTag stores where a tag points as of at, fresh for ttl, keeping where it pointed before
// it last moved (prev, from another replica, unless this one saw a later move); claim is
// nil when d's type and size came from a verified body (see claimed). It returns the
// entry, which is not kept when the tag is not kept at all (its TTL and max_stale both 0).
func (c *Cache) putTag(key string, d upstream.Descriptor, at time.Time, ttl time.Duration, prev upstream.Descriptor, claim *ManifestEntry) *TagEntry {
	e := &TagEntry{Descriptor: d, FetchedAt: at, TTL: ttl, Previous: prev, claim: claim}
	if ttl+c.cfg.MaxStale <= 0 {
		return e
	}
	e.key = c.entryKey(key)
	if old := c.store.tag(key); old != nil {
		if old.Digest != d.Digest {
			e.Previous = old.Descriptor
		} else if old.Previous.Digest != "" {
			e.Previous = old.Previous
		}
	}
	// No ristretto TTL: expiry is FetchedAt's business (byTag ignores entries past
	// tag_ttl + max_stale), and a TTL would make every hit read the clock again.
	c.store.set(key, e, 0, 0)
	return e
}

// orPrevious turns a failure to fetch a moved tag's new body into the stale answer the
// cache still has: on Docker Hub the HEAD that shows the move is free, and the GET that
// follows is what the rate limit refuses.
func (c *Cache) orPrevious(r Request, a Answer, err error, prev upstream.Descriptor, at time.Time) (Answer, error) {
	if err == nil || prev.Digest == "" || !serveStaleOn(err) {
		return a, err
	}
	up := r.Origin.Registry.Name()
	e := c.store.manifest(manifestKey(up, r.Repo, string(prev.Digest)))
	if e == nil || e.Body == nil {
		return a, err
	}
	c.log.Warn("serving the previous manifest of a moved tag",
		zap.String("upstream", up), zap.String("repository", r.Repo), zap.String("reference", r.Ref), zap.Error(err))
	return answer(e.Descriptor, e.Body, true, Stale, at), nil
}

// cachedBody is the manifest entry for d when it holds a body, looked up without
// allocating.
func (c *Cache) cachedBody(up, repo string, d digest.Digest) *ManifestEntry {
	k := getKey('m', up, repo, string(d))
	e := c.store.manifest(k.String())
	k.release()
	if e == nil || e.Body == nil {
		return nil
	}
	return e
}

func answer(d upstream.Descriptor, body []byte, wantBody bool, st Status, at time.Time) Answer {
	if !wantBody {
		body = nil
	}
	return Answer{Descriptor: d, Body: body, Status: st, FetchedAt: at}
}

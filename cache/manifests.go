package cache

// Manifests by tag: the hit path, and on a miss one road through coalescing, the fleet and
// upstream, with revalidation by HEAD and stale answers while upstream fails.

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"regcache/upstream"
)

// Manifest resolves ref (a tag or a digest) in repo on o. With wantBody false only the
// descriptor is needed (a client HEAD), and upstream is never asked with GET for it unless
// upstream's HEAD answers lack a digest.
func (c *Cache) Manifest(ctx context.Context, o *Origin, repo, ref string, wantBody bool) (Answer, error) {
	return c.ManifestAt(ctx, o, repo, ref, wantBody, c.now())
}

// ManifestAt is Manifest for a request that has read the clock already (the hit path
// reads it once). repo and ref may alias the caller's request buffers: they are copied
// before anything that outlives the call keeps them.
func (c *Cache) ManifestAt(ctx context.Context, o *Origin, repo, ref string, wantBody bool, now time.Time) (Answer, error) {
	if a, ok := c.Hit(o, repo, ref, wantBody, now); ok {
		return a, nil
	}
	if strings.IndexByte(ref, ':') >= 0 {
		if d, err := digest.Parse(ref); err == nil {
			return c.byDigest(ctx, o, repo, d, wantBody)
		}
	}
	return c.byTag(ctx, o, repo, ref, wantBody, now)
}

// Hit answers from memory alone, never asking upstream: a fresh tag, or a manifest by
// digest, with its body when wantBody. ok is false when anything more is needed. Only
// what was validated and fetched is ever stored, so a caller may try Hit before it
// validates the request's names: an invalid name cannot match.
func (c *Cache) Hit(o *Origin, repo, ref string, wantBody bool, now time.Time) (Answer, bool) {
	up := o.Registry.Name()
	if strings.IndexByte(ref, ':') >= 0 {
		// A digest (tags cannot contain ':'); its entry never goes stale.
		k := getKey('m', up, repo, ref)
		e := c.store.manifest(k.String())
		k.release()
		if e == nil || (wantBody && e.Body == nil) {
			return Answer{}, false
		}
		return answer(e.Descriptor, e.Body, wantBody, Hit, time.Time{}), true
	}
	k := getKey('t', up, repo, ref)
	te := c.store.tag(k.String())
	k.release()
	if te == nil || now.Sub(te.FetchedAt) >= o.TagTTL {
		return Answer{}, false
	}
	if !wantBody {
		// A HEAD named the digest; a body fetched since (by digest, or by a GET of the tag)
		// says what its type and size really are.
		return answer(te.descriptor(), nil, false, Hit, te.FetchedAt), true
	}
	if e := c.cachedBody(up, repo, te.Digest); e != nil {
		// The body's own descriptor: it was verified, the tag entry's type and size were not.
		return answer(e.Descriptor, e.Body, true, Hit, te.FetchedAt), true
	}
	return Answer{}, false
}

func (c *Cache) byTag(ctx context.Context, o *Origin, repo, tag string, wantBody bool, now time.Time) (Answer, error) {
	up := o.Registry.Name()
	k := getKey('t', up, repo, tag)
	te := c.store.tag(k.String())
	k.release()
	if te != nil && now.Sub(te.FetchedAt) > o.TagTTL+c.cfg.MaxStale {
		te = nil // past serving even as stale
	}
	if te != nil && now.Sub(te.FetchedAt) < o.TagTTL {
		// Fresh, but the body is not here (Hit said so): one GET by digest.
		repo, tag = strings.Clone(repo), strings.Clone(tag)
		a, err := c.withBody(ctx, o, repo, te.Descriptor, nil, wantBody, Hit, te.FetchedAt)
		return c.orPrevious(o, repo, tag, a, err, te.Previous, te.FetchedAt)
	}
	// Past here upstream may be asked: keep our own copies of the caller's strings.
	repo, tag = strings.Clone(repo), strings.Clone(tag)
	if te == nil {
		if err := c.store.negative(negativeKey(up, repo, tag)); err != nil {
			return Answer{}, err
		}
		m, err := c.resolveTag(ctx, o, repo, tag, wantBody)
		if err != nil {
			return Answer{}, err
		}
		// The answer's time is when the entry was fetched, by this replica or another one
		// through the shared tier.
		at := now
		k := getKey('t', up, repo, tag)
		if te := c.store.tag(k.String()); te != nil && te.Digest == m.Digest {
			at = te.FetchedAt
		}
		k.release()
		return c.withBody(ctx, o, repo, m.Descriptor, m.Body, wantBody, Miss, at)
	}

	// Stale: one HEAD tells whether the tag still points where it did. A client waits for
	// it at most revalidate_wait; the HEAD itself goes on and refreshes the cache.
	wctx, cancel := context.WithTimeout(ctx, c.cfg.RevalidateWait)
	defer cancel()
	m, err := c.resolveTag(wctx, o, repo, tag, false)
	switch {
	case err == nil && m.Digest == te.Digest:
		// Unchanged, but the body may never have been fetched (the tag moved while GETs were
		// refused): then, as on the fresh path, the manifest it pointed to before stands in.
		a, err := c.withBody(ctx, o, repo, te.Descriptor, m.Body, wantBody, Revalidated, c.now())
		return c.orPrevious(o, repo, tag, a, err, te.Previous, te.FetchedAt)
	case err == nil:
		a, err := c.withBody(ctx, o, repo, m.Descriptor, m.Body, wantBody, Miss, c.now())
		return c.orPrevious(o, repo, tag, a, err, te.Descriptor, te.FetchedAt)
	case ctx.Err() != nil:
		return Answer{}, ctx.Err() // the client went away
	case errors.Is(err, context.DeadlineExceeded) || serveStaleOn(err):
		c.log.Warn("serving stale",
			zap.String("upstream", up), zap.String("repository", repo), zap.String("reference", tag),
			zap.Duration("age", now.Sub(te.FetchedAt)), zap.Error(err))
		a, err := c.withBody(ctx, o, repo, te.Descriptor, nil, wantBody, Stale, te.FetchedAt)
		return c.orPrevious(o, repo, tag, a, err, te.Previous, te.FetchedAt)
	default:
		return Answer{}, err
	}
}

// resolveTag asks upstream where tag points now, coalesced per tag: the first caller
// decides between HEAD and GET, and a caller that needs a body the HEAD did not bring
// fetches it by digest afterwards.
func (c *Cache) resolveTag(ctx context.Context, o *Origin, repo, tag string, wantBody bool) (upstream.Manifest, error) {
	up := o.Registry.Name()
	key := tagKey(up, repo, tag)
	m, err, _ := c.flights.Do(ctx, key, func() (upstream.Manifest, error) {
		// The caller looked in the store before joining; a flight for this tag that finished
		// in between has answered already (a burst's straggler, or a revalidation that just
		// landed), and upstream must not be asked twice.
		if te := c.store.tag(key); te != nil && c.now().Sub(te.FetchedAt) < o.TagTTL {
			return upstream.Manifest{Descriptor: te.Descriptor}, nil
		}
		if err := c.store.negative(negativeKey(up, repo, tag)); err != nil {
			return upstream.Manifest{}, err
		}
		// seen is the shared entry last read, fresh or not: where the tag pointed before, for
		// the entry the fetch writes (its Previous), even on a replica that never saw it.
		var seen *TagEntry
		look := func() (upstream.Manifest, bool) {
			te := c.shared.getTag(up, repo, tag)
			if te == nil {
				return upstream.Manifest{}, false
			}
			seen = te
			now := c.now()
			if te.FetchedAt.After(now) {
				te.FetchedAt = now // another replica's clock runs ahead (getTag refused more than a minute)
			}
			if now.Sub(te.FetchedAt) >= o.TagTTL {
				return upstream.Manifest{}, false
			}
			// The entry names a digest; a verified body for it, here or shared, says what its
			// type and size are, as askTag does for upstream's HEADs.
			d, claim := c.claimed(up, repo, te.Descriptor)
			if claim != nil {
				if e := c.shared.getManifest(up, repo, d.Digest); e != nil {
					c.putManifest(up, repo, upstream.Manifest{Descriptor: e.Descriptor, Body: e.Body})
					d, claim = e.Descriptor, nil
				}
			}
			c.putTag(o, key, d, te.FetchedAt, te.Previous, claim)
			return upstream.Manifest{Descriptor: d}, true
		}
		ask := func() (upstream.Manifest, error) { return c.askTag(o, repo, tag, wantBody, seen) }
		m, err := fleet(c.shared, "tag:"+up+"/"+repo+":"+tag, c.fleetWait(o), look, ask)
		if c.remember(up, repo, tag, err) && upstream.KindOf(err) == upstream.KindNotFound {
			// The tag is gone upstream (this replica's answer or the fleet's): stop serving it.
			// A denial is not a deletion: the stale tag stays for when access returns.
			c.store.del(key)
			if c.shared != nil {
				c.shared.delTag(up, repo, tag)
			}
		}
		return m, err
	})
	return m, err
}

// fleetWait bounds how long a request waits on another replica's upstream request for
// o: revalidate_wait plus the upstream timeout, by when the holder's own request has ended.
func (c *Cache) fleetWait(o *Origin) time.Duration {
	return c.cfg.RevalidateWait + o.Registry.Timeout()
}

// askTag asks upstream where tag points now and caches the answer in both tiers. The
// manifest is shared before the tag entry, so a replica that finds the tag finds its body.
func (c *Cache) askTag(o *Origin, repo, tag string, wantBody bool, shared *TagEntry) (upstream.Manifest, error) {
	up := o.Registry.Name()
	key := tagKey(up, repo, tag)
	var m upstream.Manifest
	var err error
	if wantBody {
		m, err = o.Registry.GetManifest(context.Background(), repo, tag)
	} else {
		m, err = o.Registry.HeadManifest(context.Background(), repo, tag)
	}
	if err != nil {
		return m, err // the flight remembers a "no"
	}
	var claim *ManifestEntry
	if m.Body != nil {
		c.putManifest(up, repo, m)
	} else {
		// A HEAD names the digest; for a manifest whose body was verified, its size and
		// type are what that body showed, whatever this answer's Content-Length claims.
		// (A lie here would otherwise be every HEAD's answer until tag_ttl passes.)
		m.Descriptor, claim = c.claimed(up, repo, m.Descriptor)
	}
	if c.shared != nil {
		c.shared.setManifest(up, repo, m)
	}
	var prev upstream.Descriptor
	if shared != nil {
		prev = shared.Previous
		if shared.Digest != m.Digest {
			prev = shared.Descriptor
		}
	}
	if e := c.putTag(o, key, m.Descriptor, c.now(), prev, claim); e != nil && c.shared != nil {
		c.shared.setTag(up, repo, tag, e, o.TagTTL+c.cfg.MaxStale)
	}
	return m, nil
}

// putTag stores where a tag points as of at, keeping where it pointed before it last moved
// (prev, from another replica, unless this one saw a later move); claim is nil when d's
// type and size came from a verified body (see claimed). It returns the entry, or nil when
// tags are not kept at all (tag_ttl and max_stale both 0).
func (c *Cache) putTag(o *Origin, key string, d upstream.Descriptor, at time.Time, prev upstream.Descriptor, claim *ManifestEntry) *TagEntry {
	if o.TagTTL+c.cfg.MaxStale <= 0 {
		return nil
	}
	e := &TagEntry{Descriptor: d, FetchedAt: at, Previous: prev, claim: claim}
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
func (c *Cache) orPrevious(o *Origin, repo, tag string, a Answer, err error, prev upstream.Descriptor, at time.Time) (Answer, error) {
	if err == nil || prev.Digest == "" || !serveStaleOn(err) {
		return a, err
	}
	e := c.store.manifest(manifestKey(o.Registry.Name(), repo, string(prev.Digest)))
	if e == nil || e.Body == nil {
		return a, err
	}
	c.log.Warn("serving the previous manifest of a moved tag",
		zap.String("upstream", o.Registry.Name()), zap.String("repository", repo), zap.String("reference", tag), zap.Error(err))
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

// withBody completes an answer: the body comes from what was just fetched, from the
// manifest store, or from one upstream GET by digest.
func (c *Cache) withBody(ctx context.Context, o *Origin, repo string, d upstream.Descriptor, body []byte, wantBody bool, st Status, at time.Time) (Answer, error) {
	if body != nil {
		return answer(d, body, wantBody, st, at), nil
	}
	// A verified body, when there is one, says what d's type and size are: d may be what
	// a HEAD claimed.
	if e := c.cachedBody(o.Registry.Name(), repo, d.Digest); e != nil {
		return answer(e.Descriptor, e.Body, wantBody, st, at), nil
	}
	if !wantBody {
		return answer(d, nil, false, st, at), nil
	}
	m, err := c.fetchDigest(ctx, o, repo, d.Digest, true)
	if err != nil {
		return Answer{}, err
	}
	if st != Stale {
		st = Miss
	}
	return answer(m.Descriptor, m.Body, true, st, at), nil
}

func answer(d upstream.Descriptor, body []byte, wantBody bool, st Status, at time.Time) Answer {
	if !wantBody {
		body = nil
	}
	return Answer{Descriptor: d, Body: body, Status: st, FetchedAt: at}
}

package cache

// The one road every miss takes, shaped like groupcache's Get → load: the caller's look in
// memory (Hit, allocation-free) → coalesce → memory again → the fleet tier → upstream →
// store in both tiers, returning the stored entry. A kind of lookup (a tag, a manifest by
// digest, a tags listing, a blob) says what each step means for it; the road and its order
// are written once, here. Work that hangs off what upstream answered (an event when a tag
// moves, a refresh scheduled before expiry) belongs in a kind's store step: the one place
// an upstream answer becomes the cache's.

import (
	"context"
	"time"

	"regcache/internal/flight"
)

// lookup is one kind of miss as load walks it. E is what the cache answers with (the
// stored entry); F is what upstream answered, before it is stored.
type lookup[E, F any] interface {
	// key names the lookup's flight and fleet lock.
	key() string
	// memory is what memory holds that answers the lookup, or upstream's remembered "no":
	// another flight may have finished since the caller looked.
	memory() (e E, ok bool, no error)
	// fleet is an entry another replica shared that answers, taken into memory.
	fleet() (E, bool)
	// waits reports whether the replicas of a fleet wait for one of them to ask upstream
	// (false for what is one cheap request anyway, or never shared).
	waits() bool
	// background reports a lookup no client waits for (refresh-ahead, a watch): its fetch
	// takes the upstream's budget, and may be refused. It has flights of its own, so that a
	// client never joins one and shares its refusal; the fleet lock is the same.
	background() bool
	// fetch asks upstream.
	fetch() (F, error)
	// store keeps what upstream answered, in memory and in the fleet tier, and returns the
	// entry stored.
	store(F) E
	// failed is told why there is no answer, upstream's or the fleet's: a "no" worth
	// remembering, or a deletion.
	failed(error)
}

// load answers a miss: coalesced per key within the process, and through the fleet tier
// across replicas, where a replica waits at most wait for another's upstream request. The
// work goes on when ctx ends; only this caller stops waiting.
func load[E, F any](ctx context.Context, flights *flight.Group[E], fleet fleetTier, wait time.Duration, l lookup[E, F]) (E, error) {
	key := l.key()
	if l.background() {
		key = "background\x00" + key
	}
	e, err, _ := flights.Do(ctx, key, func() (E, error) {
		if e, ok, no := l.memory(); ok || no != nil {
			return e, no
		}
		e, err := ask(fleet, wait, l)
		if err != nil {
			l.failed(err)
		}
		return e, err
	})
	return e, err
}

// ask is the fleet tier, then upstream: one replica of a fleet asks upstream while the
// others wait for the answer it shares. A waiter asks upstream itself when the lock goes
// without an answer appearing (the holder failed), takes the lock over when its holder
// stops renewing it (died or hung), and in any case stops waiting after wait.
func ask[E, F any](fleet fleetTier, wait time.Duration, l lookup[E, F]) (E, error) {
	if e, ok := l.fleet(); ok {
		return e, nil
	}
	if !l.waits() {
		return fetchAndStore(l)
	}
	key := l.key()
	release, mine := fleet.lock(key)
	if !mine {
		var e E
		arrived := func() (ok bool) { e, ok = l.fleet(); return ok }
		var done bool
		var err error
		if release, done, err = fleet.await(key, wait, arrived); done {
			return e, err
		}
		mine = release != nil
	}
	if release != nil {
		defer release()
		// The replica that held the lock before may have shared its answer and let go
		// between our look and our lock.
		if e, ok := l.fleet(); ok {
			return e, nil
		}
	}
	e, err := fetchAndStore(l)
	if err != nil && mine {
		fleet.setFailure(key, err) // before the lock goes: the waiters read it then
	}
	return e, err
}

func fetchAndStore[E, F any](l lookup[E, F]) (E, error) {
	f, err := l.fetch()
	if err != nil {
		var zero E
		return zero, err
	}
	return l.store(f), nil
}

package feed

// Filter is what a subscriber or a webhook asked for: images (registry/repository[:tag]),
// registries and types, each a set where empty means all.
type Filter struct {
	Images, Registries, Types []string
}

// Match reports whether e is for this subscriber; a reset always is.
func (f Filter) Match(e Event) bool {
	if e.Type == Reset {
		return true
	}
	if !in(f.Registries, e.Registry) || !in(f.Types, e.Type) {
		return false
	}
	if len(f.Images) == 0 {
		return true
	}
	for _, img := range f.Images {
		// registry/repository[:tag]: without a tag, every tag of the repository.
		if img == e.Image || img == e.Registry+"/"+e.Repository {
			return true
		}
	}
	return false
}

// in reports whether v is in set, an empty set holding everything.
func in(set []string, v string) bool {
	if len(set) == 0 {
		return true
	}
	for _, s := range set {
		if s == v {
			return true
		}
	}
	return false
}

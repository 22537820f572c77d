package kernel

// Kinds of entries, as used in Changes and metrics labels.
const (
	EntryLink  = "link"
	EntryAddr  = "addr"
	EntryRoute = "route"
	EntryNeigh = "neigh"
	EntryFDB   = "fdb"
)

// Changes counts what one Apply changed, by entry kind.
type Changes struct {
	Created map[string]int // entries that were missing (after a first sync: repairs)
	Updated map[string]int // entries that existed with other settings
	Deleted map[string]int // entries of ours that are no longer wanted
}

func newChanges() Changes {
	return Changes{Created: map[string]int{}, Updated: map[string]int{}, Deleted: map[string]int{}}
}

// Add adds the counts of o to c.
func (c Changes) Add(o Changes) {
	for kind, n := range o.Created {
		c.Created[kind] += n
	}
	for kind, n := range o.Updated {
		c.Updated[kind] += n
	}
	for kind, n := range o.Deleted {
		c.Deleted[kind] += n
	}
}

// Total is the number of changes of any kind.
func (c Changes) Total() int {
	n := 0
	for _, m := range []map[string]int{c.Created, c.Updated, c.Deleted} {
		for _, v := range m {
			n += v
		}
	}
	return n
}

// countSet counts an entry that was set: an update if it existed before.
func countSet(ch *Changes, kind string, existed bool) {
	if existed {
		ch.Updated[kind]++
	} else {
		ch.Created[kind]++
	}
}

// Counts is how many entries of each kind overlayd has in the kernel.
type Counts map[string]int

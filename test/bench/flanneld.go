package bench

// BesideFlanneldFile is BenchmarkBesideFlanneld's result file.
const BesideFlanneldFile = "beside-flanneld.json"

// BesideFlanneld is what BenchmarkBesideFlanneld measured, per peer count.
type BesideFlanneld struct {
	Sizes       []BesideFlanneldSize
	LimitSec    float64 // how long an agent's cold start was waited for
	BatchChange int     // Nodes added, then deleted, in one batch
}

// BesideFlanneldSize is both agents' figures at one peer count, overlayd's
// first.
type BesideFlanneldSize struct {
	Peers  int
	Agents []AgentFigures
}

// AgentFigures are one agent's figures at one peer count.
type AgentFigures struct {
	Agent string // "overlayd" or "flanneld"
	// Programmed: every peer's route, neighbour and FDB entry was in the
	// kernel within LimitSec; else Entries says how far it got and the
	// batch changes were not measured.
	Programmed   bool
	Entries      string
	ColdStartSec float64 // start to every entry
	CPUSec       float64 // the agent's CPU seconds until then
	RSSKiB       int64   // its VmRSS then
	AddSec       float64 // BatchChange Nodes created to all their entries in the kernel
	DeleteSec    float64 // those Nodes deleted to all their entries gone
}

package bench

// APIServerCostFile is BenchmarkAPIServerCost's result file.
const APIServerCostFile = "apiserver.json"

// APIServerCost is what BenchmarkAPIServerCost measured, per lease mode.
type APIServerCost struct {
	Modes []APIServerModeCost
}

// APIServerModeCost is what one Node status update costs the API server for
// each agent, in one lease mode.
type APIServerModeCost struct {
	Mode            string  // "podCIDR" or "lease"
	Peers           int     // peer Nodes in the API server
	Updates         int     // Node status updates measured
	EventsPerUpdate float64 // watch events sent to one agent per update
	BytesPerUpdate  float64 // bytes sent to one agent per update
	LeaseEventBytes float64 // Lease mode: mean size of a Lease watch event
}

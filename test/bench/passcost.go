package bench

// PassCostFile is BenchmarkPassAfterOneChange's result file.
const PassCostFile = "passcost.json"

// PassCost is what BenchmarkPassAfterOneChange measured, per peer count.
type PassCost struct {
	Sizes []PassCostSize
}

// PassCostSize is what one changed peer cost the agent at one peer count,
// one value per change.
type PassCostSize struct {
	Peers  int
	CPUMs  []float64 // agent CPU from the change until its passes ended
	PassMs []float64 // the passes' duration in all
	Passes []float64 // passes the change brought
	// Profile is pprof's top functions by cumulative time over a few
	// further changes.
	Profile string
}

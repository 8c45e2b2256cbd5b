// healthcheck-go: checks the host's memory and disk against limits, with the agent's metrics.
//
// Payload (JSON, every field optional):
//
//	{"max_memory_percent": 90, "max_disk_percent": 90, "history_seconds": 0}
//
// Result: {"healthy", "checks": [{"name", "used_percent", "limit_percent", "ok"}, ...],
// "memory_total_bytes", "disk_total_bytes", "agent_memory_bytes",
// "history": {"seconds", "samples", "peak_cpu_percent"} (when history_seconds > 0)}
package main

import (
	"encoding/json"
	"math"
	"mime"
	"strconv"
	"strings"

	"healthcheck-go/ferry"
)

type check struct {
	Name         string  `json:"name"`
	UsedPercent  float64 `json:"used_percent"`
	LimitPercent float64 `json:"limit_percent"`
	OK           bool    `json:"ok"`
}

type history struct {
	Seconds        int64   `json:"seconds"`
	Samples        int     `json:"samples"`
	PeakCPUPercent float64 `json:"peak_cpu_percent"`
}

type result struct {
	Healthy          bool     `json:"healthy"`
	Checks           []check  `json:"checks"`
	MemoryTotalBytes uint64   `json:"memory_total_bytes"`
	DiskTotalBytes   uint64   `json:"disk_total_bytes"`
	AgentMemoryBytes uint64   `json:"agent_memory_bytes"`
	History          *history `json:"history,omitempty"`
}

func init() {
	ferry.Handle(handle)
}

// percentLimit reads a limit from 1 to 100, 90 when absent.
func percentLimit(request map[string]any, field string) (float64, error) {
	value, present := request[field]
	if !present {
		return 90, nil
	}
	n, isNumber := value.(float64)
	if !isNumber || n < 1 || n > 100 {
		shown, _ := json.Marshal(value)
		return 0, ferry.InvalidInputf("`%s` must be a number from 1 to 100, not %s", field, shown)
	}
	return n, nil
}

// hostError maps a refused metrics call: denied when the capability is not granted, failed
// otherwise.
func hostError(err error) error {
	if strings.Contains(err.Error(), "not granted") {
		return ferry.Deniedf("%s", err)
	}
	return ferry.Failedf("%s", err)
}

func percent(used, total uint64) float64 {
	if total == 0 {
		return 0
	}
	return math.Round(float64(used)*1000/float64(total)) / 10
}

func handle(cmd ferry.Command) ([]byte, error) {
	if mediaType, _, _ := mime.ParseMediaType(cmd.ContentType); cmd.ContentType != "" && mediaType != "application/json" {
		return nil, ferry.InvalidInputf("the payload is %s; send application/json", cmd.ContentType)
	}
	request := map[string]any{}
	if len(cmd.Payload) > 0 {
		var decoded any
		if err := json.Unmarshal(cmd.Payload, &decoded); err != nil {
			return nil, ferry.InvalidInputf("the payload is not valid JSON: %v", err)
		}
		object, isObject := decoded.(map[string]any)
		if !isObject {
			return nil, ferry.InvalidInputf(`the payload must be a JSON object, like {"max_memory_percent": 90}`)
		}
		request = object
	}
	maxMemory, err := percentLimit(request, "max_memory_percent")
	if err != nil {
		return nil, err
	}
	maxDisk, err := percentLimit(request, "max_disk_percent")
	if err != nil {
		return nil, err
	}
	var historySeconds int64
	if value, present := request["history_seconds"]; present {
		n, isNumber := value.(float64)
		if !isNumber || n != math.Trunc(n) || n < 0 || n > 86400 {
			shown, _ := json.Marshal(value)
			return nil, ferry.InvalidInputf("`history_seconds` must be a whole number from 0 to 86400, not %s", shown)
		}
		historySeconds = int64(n)
	}
	ferry.Progress(10, "payload checked")

	sample, err := ferry.MetricsNow()
	if err != nil {
		return nil, hostError(err)
	}
	ferry.Progress(50, "sampled the host")

	checks := []check{
		{Name: "memory", UsedPercent: percent(sample.MemoryUsedBytes, sample.MemoryTotalBytes), LimitPercent: maxMemory},
		{Name: "disk", UsedPercent: percent(sample.DiskUsedBytes, sample.DiskTotalBytes), LimitPercent: maxDisk},
	}
	healthy := true
	for i := range checks {
		c := &checks[i]
		c.OK = c.UsedPercent <= c.LimitPercent
		if !c.OK {
			healthy = false
			ferry.Warnf("%s is %g%% used, over the limit of %g%%", c.Name, c.UsedPercent, c.LimitPercent)
		}
	}
	ferry.Infof("memory %g%% used, disk %g%% used", checks[0].UsedPercent, checks[1].UsedPercent)

	out := result{
		Healthy:          healthy,
		Checks:           checks,
		MemoryTotalBytes: sample.MemoryTotalBytes,
		DiskTotalBytes:   sample.DiskTotalBytes,
		AgentMemoryBytes: sample.AgentMemoryBytes,
	}
	if historySeconds > 0 {
		samples, err := ferry.MetricsHistory(uint32(historySeconds))
		if err != nil {
			return nil, hostError(err)
		}
		peak := 0.0
		for _, s := range samples {
			peak = math.Max(peak, float64(s.CPUPercent))
		}
		out.History = &history{Seconds: historySeconds, Samples: len(samples), PeakCPUPercent: math.Round(peak*10) / 10}
		ferry.Progress(80, "read "+strconv.Itoa(len(samples))+" samples of history")
	}
	ferry.Progress(100, "done")
	return json.Marshal(out)
}

// main never runs: the agent calls the handler registered in init.
func main() {}

package bench

import (
	"fmt"
	"math"
	"os"
	"strings"
)

// latencyPoint is one offered rate's result, for the chart.
type latencyPoint struct {
	rate          int
	floor, herald percentiles
}

// writeLatencyChart draws latency percentiles (log scale) against offered rate as an SVG: Herald's
// p50, p99 and p999 beside the floor's p99, so that BENCHMARKS.md can show the figures it lists.
func writeLatencyChart(path string, pts []latencyPoint) error {
	const w, h, left, right, top, bottom = 640.0, 400.0, 70.0, 170.0, 30.0, 50.0
	minMs, maxMs := 0.05, 100.0
	for _, p := range pts {
		maxMs = math.Max(maxMs, p.herald.p999*1.5)
	}
	maxRate := 0
	for _, p := range pts {
		maxRate = max(maxRate, p.rate)
	}
	x := func(rate int) float64 { return left + (w-left-right)*float64(rate)/float64(maxRate) }
	y := func(ms float64) float64 {
		ms = math.Max(ms, minMs)
		return top + (h-top-bottom)*(1-(math.Log10(ms)-math.Log10(minMs))/(math.Log10(maxMs)-math.Log10(minMs)))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="18" font-size="14">Enqueue-to-arrival latency against offered rate (open loop)</text>`+"\n", left)
	for ms := minMs; ms <= maxMs*1.01; ms *= 10 {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%g ms</text>`+"\n",
			left, w-right, y(ms), y(ms), left-6, y(ms)+4, ms)
	}
	for _, p := range pts {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%d/s</text>`+"\n", x(p.rate), h-bottom+18, p.rate)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">offered rate (messages per second)</text>`+"\n", (left+w-right)/2, h-10)
	series := []struct {
		name, color, dash string
		get               func(latencyPoint) float64
	}{
		{"herald p50", "#1f77b4", "", func(p latencyPoint) float64 { return p.herald.p50 }},
		{"herald p99", "#d62728", "", func(p latencyPoint) float64 { return p.herald.p99 }},
		{"herald p999", "#9467bd", "", func(p latencyPoint) float64 { return p.herald.p999 }},
		{"floor p99", "#7f7f7f", "6,4", func(p latencyPoint) float64 { return p.floor.p99 }},
	}
	for i, s := range series {
		var path []string
		for _, p := range pts {
			path = append(path, fmt.Sprintf("%.1f,%.1f", x(p.rate), y(s.get(p))))
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x(p.rate), y(s.get(p)), s.color)
		}
		fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2" stroke-dasharray="%s"/>`+"\n", strings.Join(path, " "), s.color, s.dash)
		ly := top + 20 + float64(i)*20
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s" stroke-width="2" stroke-dasharray="%s"/><text x="%.1f" y="%.1f">%s</text>`+"\n",
			w-right+12, w-right+40, ly, ly, s.color, s.dash, w-right+46, ly+4, s.name)
	}
	b.WriteString("</svg>\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// Package metrics defines the Prometheus collectors of a Herald service, on a registry of its own
// so that tests and several services in one process never collide.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the counters, gauges and histograms of one service. Updating them allocates nothing.
type Metrics struct {
	// Received counts messages taken from the broker.
	Received prometheus.Counter
	// Delivered counts messages the receiver accepted (2xx).
	Delivered prometheus.Counter
	// Failed counts failed delivery attempts (each retry's failure counts).
	Failed prometheus.Counter
	// Retried counts messages scheduled for a retry.
	Retried prometheus.Counter
	// DeadLettered counts messages moved to the dead-letter list.
	DeadLettered prometheus.Counter
	// Dropped counts messages given up on without a trace (HERALD_ON_EXHAUSTED=drop).
	Dropped prometheus.Counter
	// InFlight is the number of messages taken and not yet settled.
	InFlight prometheus.Gauge
	// QueueDepth is the length of each queue, by name.
	QueueDepth *prometheus.GaugeVec
	// BrokerUp is 1 while the last broker call succeeded.
	BrokerUp prometheus.Gauge
	// DeliveryLatency is the time one delivery attempt took.
	DeliveryLatency prometheus.Histogram
	// Age is the time from taking a message to settling it.
	Age prometheus.Histogram

	reg *prometheus.Registry
}

// New creates the collectors of service (deliver, relay, ...) on a fresh registry, with the Go
// runtime and process collectors.
func New(service string) *Metrics {
	labels := prometheus.Labels{"service": service}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels})
	}
	buckets := prometheus.ExponentialBucketsRange(0.0005, 10, 16)
	m := &Metrics{
		Received:     counter("herald_messages_received_total", "Messages taken from the broker."),
		Delivered:    counter("herald_messages_delivered_total", "Messages accepted by their receiver."),
		Failed:       counter("herald_delivery_failures_total", "Failed delivery attempts."),
		Retried:      counter("herald_messages_retried_total", "Messages scheduled for a retry."),
		DeadLettered: counter("herald_messages_dead_lettered_total", "Messages moved to the dead-letter list."),
		Dropped:      counter("herald_messages_dropped_total", "Messages dropped after their last retry, as configured."),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "herald_messages_in_flight",
			Help: "Messages taken and not yet settled.", ConstLabels: labels}),
		QueueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "herald_queue_depth",
			Help: "Length of each queue, sampled every few seconds.", ConstLabels: labels}, []string{"queue"}),
		BrokerUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "herald_broker_up",
			Help: "1 while the last broker call succeeded.", ConstLabels: labels}),
		DeliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "herald_delivery_duration_seconds",
			Help: "Time one delivery attempt took.", ConstLabels: labels, Buckets: buckets}),
		Age: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "herald_message_age_seconds",
			Help: "Time from taking a message to settling it.", ConstLabels: labels, Buckets: buckets}),
		reg: prometheus.NewRegistry(),
	}
	m.reg.MustRegister(m.Received, m.Delivered, m.Failed, m.Retried, m.DeadLettered, m.Dropped,
		m.InFlight, m.QueueDepth, m.BrokerUp, m.DeliveryLatency, m.Age,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is where the collectors are registered, for the /metrics handler.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

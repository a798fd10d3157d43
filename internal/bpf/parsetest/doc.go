// Package parsetest holds parsetest.c, a BPF program that exists to prove the
// shared C helpers in internal/bpf/include: it runs nb_parse (and the NAT
// rewrite helpers) on one frame and records the result in a map, so the tests
// here can feed it frames with BPF_PROG_RUN and check every field.
//
// It has no API; its tests are the point.
package parsetest

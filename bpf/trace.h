/* Each decision on a new flow to the kernel's trace pipe when built with --bpf-trace
 * (EBPFLB_TRACE=1), as Calico's BPF debug log level does; compiled out otherwise.
 * Read with: cat /sys/kernel/tracing/trace_pipe */
#pragma once

#ifndef EBPFLB_TRACE
#define EBPFLB_TRACE 0
#endif

#if EBPFLB_TRACE
/* bcc rewrites bpf_trace_printk() only outside macros: call the helper it stands for. */
#define TRACE(fmt, ...) ({ char _fmt[] = "ebpflb: " fmt; bpf_trace_printk_(_fmt, sizeof(_fmt), ##__VA_ARGS__); })
#else
#define TRACE(fmt, ...) do { } while (0)
#endif

#!/usr/bin/env bash
# Run a command as on an AVX2-only CPU (AMD EPYC Zen 2: AVX2 and FMA, no AVX-512, no VNNI), the CPU kind whose
# ONNX Runtime integer kernels saturate (issue 14), on any x86-64 Linux machine:
#
#   tests/as_avx2_cpu.sh .venv/bin/python -m pytest -q tests/test_calibration.py
#
# qemu-user (Debian's qemu-user) translates the command's instructions and answers CPUID as QEMU's EPYC-Rome
# model, so numpy, ONNX Runtime (MLAS), oneDNN and PyTorch pick their AVX2 kernels, and QEMU carries them out
# as an AVX2 CPU would (the 16-bit saturating sums of vpmaddubsw included). /proc/cpuinfo, which qemu-user
# passes through from the host, is replaced in a private mount namespace by the host's with that CPU's model
# and flags, so mgd_rt.machine sees the same CPU the kernels do. Needs root or unprivileged user namespaces.
# Correctness only: translated code runs hundreds of times slower, floating point worst (QEMU computes it in
# software: the tiny graph's export, 40 s natively, runs past half an hour; run the tests natively first with
# MGD_RT_TEST_EXPORT_CACHE=DIR, then here with the same DIR: tests/export_cache.py), so no timing taken here means
# anything. Processes the command starts run natively (qemu-user does not follow
# execve) on the host's CPU but with the replaced /proc/cpuinfo: keep to tests that compute in their own process.
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARG...]: run COMMAND as on an AVX2-only CPU (qemu-user, EPYC-Rome)" >&2
  exit 2
fi
qemu=$(command -v qemu-x86_64 || true)
if [ -z "$qemu" ]; then
  echo "error: qemu-x86_64 not found: install Debian's qemu-user (apt-get install qemu-user)" >&2
  exit 2
fi
if [ "$(uname -m)" != x86_64 ]; then
  echo "error: this emulates an x86-64 CPU on an x86-64 host; this machine is $(uname -m)" >&2
  exit 2
fi
cpuinfo=$(mktemp)
trap 'rm -f "$cpuinfo"' EXIT
# the flags a Zen 2 VM shows (EPYC-Rome): AVX2, FMA, F16C, BMI; no avx512*, no avx_vnni, no amx*
flags="fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall \
nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid pni pclmulqdq ssse3 fma \
cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy abm sse4a misalignsse \
3dnowprefetch osvw topoext fsgsbase bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec \
xgetbv1 clzero arat umip rdpid"
sed -E -e "s/^flags[[:space:]]*:.*/flags\t\t: $flags/" \
  -e "s/^model name[[:space:]]*:.*/model name\t: AMD EPYC-Rome Processor (emulated: qemu-x86_64 -cpu EPYC-Rome)/" \
  -e "s/^vendor_id[[:space:]]*:.*/vendor_id\t: AuthenticAMD/" \
  -e "s/^cpu family[[:space:]]*:.*/cpu family\t: 23/" -e "s/^model[[:space:]]*:[[:space:]]*[0-9]+$/model\t\t: 49/" \
  /proc/cpuinfo >"$cpuinfo"
namespace=(unshare --mount)
[ "$(id -u)" -ne 0 ] && namespace=(unshare --map-root-user --mount)
# QEMU warns once per CPUID feature its translator lacks (pcid, x2apic, ...): none changes what code computes
"${namespace[@]}" sh -c 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"' sh "$cpuinfo" \
  "$qemu" -cpu EPYC-Rome "$@" 2> >(grep --line-buffered -v "^qemu-x86_64: warning: TCG doesn't support" >&2)

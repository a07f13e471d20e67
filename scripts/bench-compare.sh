#!/usr/bin/env bash
# bench-compare: the same `nvblk bench` matrix against nvblk and against
# qemu-storage-daemon's vhost-user-blk export, on images of the same size,
# with a nvblk/QSD ratio per row. Each back-end is tried in a few
# configurations and its best one (by IOPS) is kept per row. All
# configurations run side by side (idle ones sleep) and each row is measured
# for every configuration back to back, so a load spike from something else
# on the machine hits both sides alike; the 1-minute load average is printed
# next to each row.
#
# Environment: BIN (nvblk binary, default bin/nvblk), SIZE (image size,
# default 1G), TIME (measured seconds per point, default 4s), RAMP (default
# 1s), KEEP=1 keeps the work directory, ONLY (an extended regular
# expression) keeps only the matrix rows whose names match it, SCATTER (a
# duration, e.g. 10s) runs random 4 KiB writes for that long on every
# back-end after the fill, so that the BTT's map is scattered as on a disk
# in use before any row runs. DIR is where the images go: by default
# /dev/shm when it is a tmpfs with room for them, else /tmp. Memory is what
# persistent memory is, and what an emulated NVDIMM file is usually put on;
# on a disk-backed filesystem nvblk's default durability (`flush`) makes
# every 256 writes durable with msync, and the write rows then measure the
# disk's random-write rate against a page cache that qemu-storage-daemon
# never flushes (docs/PERFORMANCE.md, "Writes in flush mode"). Try
# DIR=/tmp for that.
set -euo pipefail

BIN=${BIN:-bin/nvblk}
SIZE=${SIZE:-1G}
TIME=${TIME:-4s}
RAMP=${RAMP:-1s}
QSD=${QSD:-qemu-storage-daemon}
command -v "$QSD" >/dev/null || { echo "bench-compare: $QSD not found (scripts/install-deps.sh installs it)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench-compare: $BIN not built (make build)" >&2; exit 1; }

# Six images of SIZE (two nvblk, three QSD, and room to spare).
need=$(($(numfmt --from=iec "$SIZE") * 6 / 1024))
if [ -z "${DIR:-}" ]; then
	DIR=/tmp
	if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && [ "$(df --output=avail -k /dev/shm | tail -1)" -gt "$need" ]; then
		DIR=/dev/shm
	fi
fi
WORK=$(mktemp -d "$DIR/nvblk-bench.XXXXXX")
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ "${KEEP:-0}" = 1 ]; then echo "results kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Configurations: name, then how to start it on socket $1 and image $2.
NVBLK_CFGS=(nvblk nvblk-poll50)
QSD_CFGS=(qsd-threads qsd-io_uring qsd-io_uring-iothread)
# The transport ceiling: the same client against qemu-storage-daemon's
# null-co driver, which completes every request at once without touching
# its data (read-zeroes off): what vhost-user and the client cost alone.
CEIL_CFGS=(qsd-null)
start_cfg() {
	local cfg=$1 sock=$2 img=$3
	local exp="type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$sock,writable=on,num-queues=2"
	case $cfg in
	nvblk) exec "$BIN" serve --socket-path "$sock" --blk-file "$img" --num-queues 2 --log-level warn ;;
	nvblk-poll50) exec "$BIN" serve --socket-path "$sock" --blk-file "$img" --num-queues 2 --poll-us 50 --log-level warn ;;
	qsd-threads) exec "$QSD" --blockdev "driver=file,node-name=f,filename=$img,cache.direct=off,aio=threads" --export "$exp" ;;
	qsd-io_uring) exec "$QSD" --blockdev "driver=file,node-name=f,filename=$img,cache.direct=off,aio=io_uring" --export "$exp" ;;
	qsd-null) exec "$QSD" --blockdev "driver=null-co,node-name=f,size=$(stat -c %s "$img"),read-zeroes=off" --export "$exp" ;;
	qsd-io_uring-iothread) exec "$QSD" --object iothread,id=io0 \
		--blockdev "driver=file,node-name=f,filename=$img,cache.direct=off,aio=io_uring" --export "$exp,iothread=io0" ;;
	esac
}

declare -A PID
echo "== setup: $SIZE images in $WORK ($(stat -f -c %T "$WORK"))"
"$BIN" format "$WORK/nvblk0.img" --size "$SIZE" --sector-size 4096 >/dev/null
BYTES=$(stat -c %s "$WORK/nvblk0.img")
cp --sparse=always "$WORK/nvblk0.img" "$WORK/nvblk1.img"
i=0
for cfg in "${NVBLK_CFGS[@]}" "${QSD_CFGS[@]}" "${CEIL_CFGS[@]}"; do
	case $cfg in
	nvblk*) img=$WORK/nvblk$i.img; i=$((i + 1)) ;;
	*) img=$WORK/$cfg.raw; truncate -s "$BYTES" "$img" ;;
	esac
	start_cfg "$cfg" "$WORK/$cfg.sock" "$img" >"$WORK/$cfg.log" 2>&1 &
	PID[$cfg]=$!
	PIDS+=("$!")
done
listening() { awk -v p="$1" '$8 == p && $4 == "00010000" { found = 1 } END { exit !found }' /proc/net/unix; }
for cfg in "${!PID[@]}"; do
	# The socket file exists from bind(2); wait for listen(2) (flag
	# __SO_ACCEPTCON in /proc/net/unix) so the first dial is not refused.
	for _ in $(seq 100); do listening "$WORK/$cfg.sock" && break; sleep 0.1; done
	listening "$WORK/$cfg.sock" || { echo "bench-compare: $cfg did not start:" >&2; cat "$WORK/$cfg.log" >&2; exit 1; }
	# Write every block once: no back-end reads holes or allocates pages
	# on its first write during the matrix.
	"$BIN" bench --socket-path "$WORK/$cfg.sock" --rw write --bs 128k --iodepth 16 --time 1s --fill >/dev/null
	if [ -n "${SCATTER:-}" ]; then
		"$BIN" bench --socket-path "$WORK/$cfg.sock" --rw randwrite --bs 4k --iodepth 32 --time "$SCATTER" >/dev/null
	fi
done

# The matrix: name rw bs iodepth queues.
ROWS=(
	"4k-randread-qd1-q1 randread 4k 1 1"
	"4k-randread-qd32-q1 randread 4k 32 1"
	"4k-randread-qd32-q2 randread 4k 32 2"
	"4k-randwrite-qd1-q1 randwrite 4k 1 1"
	"4k-randwrite-qd32-q1 randwrite 4k 32 1"
	"4k-randwrite-qd32-q2 randwrite 4k 32 2"
	"128k-read-qd16-q1 read 128k 16 1"
	"128k-read-qd16-q2 read 128k 16 2"
	"128k-write-qd16-q1 write 128k 16 1"
	"128k-write-qd16-q2 write 128k 16 2"
)

if [ -n "${ONLY:-}" ]; then
	kept=()
	for row in "${ROWS[@]}"; do
		if [[ ${row%% *} =~ $ONLY ]]; then kept+=("$row"); fi
	done
	[ ${#kept[@]} -gt 0 ] || { echo "bench-compare: ONLY=$ONLY matches no row" >&2; exit 1; }
	ROWS=("${kept[@]}")
fi

# num FILE KEY: a number from bench --json output.
num() { sed -n "s/.*\"$2\": *\([-0-9.e+]*\).*/\1/p" "$1"; }

ALL_CFGS=("${NVBLK_CFGS[@]}" "${QSD_CFGS[@]}" "${CEIL_CFGS[@]}")
echo "== matrix: ${#ROWS[@]} rows x ${#ALL_CFGS[@]} configurations, $TIME each after a $RAMP ramp"
mkdir -p "$WORK/res"
for row in "${ROWS[@]}"; do
	read -r name rw bs qd q <<<"$row"
	cut -d' ' -f1 /proc/loadavg >"$WORK/res/$name.load"
	for cfg in "${ALL_CFGS[@]}"; do
		"$BIN" bench --socket-path "$WORK/$cfg.sock" --rw "$rw" --bs "$bs" --iodepth "$qd" --queues "$q" \
			--time "$TIME" --ramp "$RAMP" --pid "${PID[$cfg]}" --json >"$WORK/res/$name.$cfg.json"
		printf '  %-22s %-22s %10.0f IOPS\n' "$name" "$cfg" "$(num "$WORK/res/$name.$cfg.json" iops)"
	done
done

# best ROW CFG...: the configuration with the most IOPS.
best() {
	local name=$1 b="" bi=0
	shift
	for cfg in "$@"; do
		local v
		v=$(num "$WORK/res/$name.$cfg.json" iops)
		if awk -v a="$v" -v b="$bi" 'BEGIN { exit !(a > b) }'; then b=$cfg bi=$v; fi
	done
	echo "$b"
}

echo
echo "== nvblk vs qemu-storage-daemon $("$QSD" --version | head -1 | awk '{print $3}') ($(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; images on $(stat -f -c %T "$WORK"))"
echo
echo "| test | load | nvblk IOPS | QSD IOPS | **ratio** | ceiling IOPS | **nvblk/ceiling** | nvblk MB/s | QSD MB/s | nvblk p50 / p99 / p99.9 µs | QSD p50 / p99 / p99.9 µs | nvblk CPU % (gen) | QSD CPU % (gen) | nvblk cfg | QSD cfg |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for row in "${ROWS[@]}"; do
	read -r name _ <<<"$row"
	n=$(best "$name" "${NVBLK_CFGS[@]}")
	s=$(best "$name" "${QSD_CFGS[@]}")
	nf=$WORK/res/$name.$n.json sf=$WORK/res/$name.$s.json cf=$WORK/res/$name.qsd-null.json
	awk -v name="$name" -v load="$(cat "$WORK/res/$name.load")" -v ncfg="$n" -v scfg="$s" \
		-v ni="$(num "$nf" iops)" -v si="$(num "$sf" iops)" -v ci="$(num "$cf" iops)" -v nm="$(num "$nf" mb_per_s)" -v sm="$(num "$sf" mb_per_s)" \
		-v n50="$(num "$nf" lat_p50_us)" -v n99="$(num "$nf" lat_p99_us)" -v n999="$(num "$nf" lat_p999_us)" \
		-v s50="$(num "$sf" lat_p50_us)" -v s99="$(num "$sf" lat_p99_us)" -v s999="$(num "$sf" lat_p999_us)" \
		-v nc="$(num "$nf" backend_cpu_pct)" -v ng="$(num "$nf" loadgen_cpu_pct)" \
		-v sc="$(num "$sf" backend_cpu_pct)" -v sg="$(num "$sf" loadgen_cpu_pct)" \
		'BEGIN { printf "| %s | %s | %.0f | %.0f | **%.2f** | %.0f | **%.2f** | %.0f | %.0f | %.1f / %.1f / %.1f | %.1f / %.1f / %.1f | %.0f (%.0f) | %.0f (%.0f) | %s | %s |\n",
			name, load, ni, si, ni / si, ci, ni / ci, nm, sm, n50, n99, n999, s50, s99, s999, nc, ng, sc, sg, ncfg, scfg }'
done
echo
echo "every configuration, IOPS:"
printf '%-22s' test
for cfg in "${ALL_CFGS[@]}"; do printf ' %22s' "$cfg"; done
echo
for row in "${ROWS[@]}"; do
	read -r name _ <<<"$row"
	printf '%-22s' "$name"
	for cfg in "${ALL_CFGS[@]}"; do printf ' %22.0f' "$(num "$WORK/res/$name.$cfg.json" iops)"; done
	echo
done
echo "load average after the matrix: $(cut -d' ' -f1-3 /proc/loadavg)"

# Packed vs split virtqueues on nvblk (qemu-storage-daemon's libvhost-user
# offers no packed ring): the same serve, the two rings alternated.
echo
echo "== nvblk, packed vs split ring (nvblk configuration, alternated)"
echo
echo "| test | split IOPS | packed IOPS | **packed/split** |"
echo "|---|---|---|---|"
for row in "4k-randread-qd32-q1 randread 4k 32 1" "4k-randwrite-qd32-q1 randwrite 4k 32 1" "128k-read-qd16-q1 read 128k 16 1"; do
	read -r name rw bs qd q <<<"$row"
	[ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]] && continue
	for ring in split packed; do
		flag=""
		[ $ring = packed ] && flag=--packed
		"$BIN" bench --socket-path "$WORK/nvblk.sock" --rw "$rw" --bs "$bs" --iodepth "$qd" --queues "$q" $flag \
			--time "$TIME" --ramp "$RAMP" --json >"$WORK/res/$name.ring-$ring.json"
	done
	awk -v name="$name" -v sp="$(num "$WORK/res/$name.ring-split.json" iops)" -v pk="$(num "$WORK/res/$name.ring-packed.json" iops)" \
		'BEGIN { printf "| %s | %.0f | %.0f | **%.2f** |\n", name, sp, pk, pk / sp }'
done

# The engine benchmarks' images go where the matrix's went: in flush mode
# on a disk-backed filesystem their write rows time the disk's writeback.
echo
echo "== engine vs memcpy: TMPDIR=$DIR go test -run '^\$' -bench . ./btt/"
TMPDIR=$DIR go test -run '^$' -bench . ./btt/

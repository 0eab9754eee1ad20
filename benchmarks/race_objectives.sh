#!/usr/bin/env bash
# The objectives' race of issue #25 (docs/race.md): ddpm, edm and flow on the quick U-Net, unconditional and
# class-conditional, against diffusers' UNet2DModel of the same size and diffusers' train_unconditional example,
# 10 minutes each. Two lanes run at once, one per seed, each a single torch thread pinned to its own core, so every
# system of both seeds trains under the same conditions: 10 minutes of one core. A lane's rows go to its own JSON
# (docs/race_objectives/seed<N>.json) as they are measured; an interrupted race continues where it stopped.
#
#   bash benchmarks/race_objectives.sh uncond     # ~1 hour on 2 cores; run nothing else meanwhile
#   bash benchmarks/race_objectives.sh cond       # ~45 minutes
#   bash benchmarks/race_objectives.sh samplers-uncond  # the trained networks with other samplers (no training)
#   bash benchmarks/race_objectives.sh samplers-cond
#   bash benchmarks/race_objectives.sh diffusers  # the issue #13 baseline, ~25 minutes (it samples slowly)
#
# Each objective is sampled with its default sampler and with DPM-Solver++(2M) and its SDE variant (ddpm's default
# is the SDE variant): the tables take each one's best at each NFE.
#   python benchmarks/race.py --table --json docs/race_objectives/seed0.json --json docs/race_objectives/seed1.json
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MINUTES=${MINUTES:-10}
NFE=${NFE:-20,50}  # network evaluations per sample to score at
OUT=${OUT:-docs/race_objectives}
WORK=${WORK:-runs/race_objectives}
mkdir -p "$OUT" "$WORK"

# The ddpm recipe unconditional: quick_uncond as it was when raced (quick_ddpm without labels, default grids).
ddpm_uncond=(--set model.class_conditional=false --set train.grid_sampler= --set train.grid_steps=20)

PHASE=${1:?which part: uncond, cond, samplers-uncond, samplers-cond or diffusers}

lane() {  # lane CORE SEED: every system of one seed, one after the other, on one core
    local core=$1 seed=$2
    run() {
        taskset -c "$core" "$PYTHON" benchmarks/race.py --threads 1 --seeds "$seed" --minutes "$MINUTES" --nfe "$NFE" \
            --work "$WORK" --json "$OUT/seed$seed.json" "$@"
    }
    case $PHASE in
    uncond)
        run --preset quick_ddpm "${ddpm_uncond[@]}" --name ddpm_uncond --baselines diffusers-same-size
        run --preset quick_edm --set model.class_conditional=false --name edm_uncond --skip-baseline
        run --preset quick_flow --set model.class_conditional=false --name flow_uncond --skip-baseline ;;
    cond)
        run --preset quick_ddpm --name ddpm_cond --skip-baseline
        run --preset quick_edm --name edm_cond --skip-baseline
        run --preset quick_flow --name flow_cond --skip-baseline ;;
    samplers-uncond | samplers-cond)
        local kind=${PHASE#samplers-} ddpm=("${ddpm_uncond[@]}") uncond=(--set model.class_conditional=false)
        [ "$kind" = cond ] && ddpm=() && uncond=()
        run --preset quick_ddpm "${ddpm[@]}" --name "ddpm_$kind" --skip-baseline --sampler dpm++2m
        for sampler in dpm++2m sde-dpm++2m; do
            run --preset quick_edm "${uncond[@]}" --name "edm_$kind" --skip-baseline --sampler "$sampler"
            run --preset quick_flow "${uncond[@]}" --name "flow_$kind" --skip-baseline --sampler "$sampler"
        done ;;
    diffusers)
        run --preset quick_ddpm "${ddpm_uncond[@]}" --name ddpm_uncond --baselines diffusers ;;
    *) echo "unknown part $PHASE: uncond, cond, samplers-uncond, samplers-cond or diffusers" >&2; exit 2 ;;
    esac
}

lane 0 0 > "$WORK/lane0-$PHASE.log" 2>&1 &
lane 1 1 > "$WORK/lane1-$PHASE.log" 2>&1 &
wait
"$PYTHON" benchmarks/race.py --table --json "$OUT/seed0.json" --json "$OUT/seed1.json"

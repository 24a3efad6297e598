"""The run schema: stage names, MLflow tag names, and the names one stage writes and another reads.

One home for every name that links runs together, so a writer and its readers cannot drift apart.
Imports nothing (no torch, no mlflow): any module, test or tool may import it.

Tags that are not MLflow's own start with TAG_PREFIX. A tag built from a name uses a prefix or a
template here: TAG_LIB_PREFIX + library, TAG_STEP_PREFIX + step, TAG_FOLD_MISSING_CLASSES.format(k=k).
Per-class metrics are `<metric>/<class>` (e.g. `cas/melanoma`); metrics on `--eval-data` (HAM10000)
are HAM_PREFIX + the metric (e.g. `ham_dice`).
"""

# ------------------------------------------------------------------------------------------------
# Stages (the value of TAG_STAGE; also the MLproject entry point and the config profile section)
# ------------------------------------------------------------------------------------------------

STAGE_MAIN = "main"
STAGE_PREPARE = "prepare"
STAGE_DESCRIBE = "describe"
STAGE_FINETUNE = "finetune"
STAGE_GENERATE = "generate"
STAGE_EVALUATE = "evaluate"
STAGE_JUDGES = "judges"                    # the CAS classifier and consistency segmenter evaluate / generate use
STAGE_REGISTER = "register"
STAGE_TUNE = "tune"
STAGE_TUNE_TRIAL = "tune-trial"            # a nested run of `tune`, one per Optuna trial
STAGE_CLASSIFY = "classify"
STAGE_CLASSIFY_FOLD = "classify-fold"      # a nested run of `classify`, one per fold
STAGE_SEGMENT = "segment"
STAGE_EXPLAIN = "explain"
STAGE_REPORT = "report"

# ------------------------------------------------------------------------------------------------
# Tags every run carries (tracking.run_tags)
# ------------------------------------------------------------------------------------------------

TAG_PREFIX = "skindualgen."
TAG_STAGE = "skindualgen.stage"
TAG_DIGEST = "skindualgen.dataset_digest"
TAG_CODE = "skindualgen.code_version"
TAG_LIB_PREFIX = "skindualgen.lib."        # + library name: its version
TAG_HOST = "skindualgen.host"              # where the stage's process ran and its pid: a stage starting marks runs
TAG_PID = "skindualgen.pid"                # of a process that is gone KILLED (tracking.reap_killed_runs, at every stage start)
TAG_THREADS = "skindualgen.torch_threads"  # torch's intra-op threads: results depend on it as well as on the seed

# MLflow's own tags
TAG_MLFLOW_NOTE = "mlflow.note.content"    # the run's (or experiment's) description in the UI
TAG_MLFLOW_PARENT_RUN = "mlflow.parentRunId"
TAG_MLFLOW_RUN_NAME = "mlflow.runName"
TAG_MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"   # an experiment tag: which view the UI opens

# ------------------------------------------------------------------------------------------------
# Lineage: which run made what another run used
# ------------------------------------------------------------------------------------------------

TAG_PROFILE = "skindualgen.profile"                    # the profile a stage ran with (paper | demo)
TAG_PROFILE_RULE = "skindualgen.profile_rule"          # what chose it: "--profile demo", "auto: ..."
TAG_OUTPUT_DIR = "skindualgen.output_dir"              # finetune: its folder; generate: the generated set
TAG_SET_DIGEST = "skindualgen.set_digest"              # generate: the dataset digest of the set it wrote
TAG_FINETUNE_RUN = "skindualgen.finetune_run_id"       # generate / evaluate / register: the model's run
TAG_GENERATE_RUN = "skindualgen.generate_run_id"       # evaluate: the generate run of the compared set
TAG_SYNTH_RUN = "skindualgen.synth_run_id"             # classify / segment: the generate run of --synth
TAG_SYNTH_DIR = "skindualgen.synth_dir"                # classify / segment: the folder of --synth
TAG_MODEL_URI = "skindualgen.model_uri"                # generate / tune: --model-uri as given
TAG_MODEL_VERSION = "skindualgen.model_version"        # ... and the registry version it resolved to
TAG_STEP_PREFIX = "skindualgen.step."                  # main: + step name -> the step's run id
# the judges of a run (evaluate; generate --min-consistency): their judges run, how it was chosen
# (JUDGES_GIVEN / JUDGES_FOUND / JUDGES_NONE), and the model of each judge
TAG_JUDGES_RUN = "skindualgen.judges_run_id"
TAG_JUDGES_FROM = "skindualgen.judges_from"
JUDGES_GIVEN, JUDGES_FOUND, JUDGES_NONE = "given", "found", "none"
TAG_CAS_MODEL = "skindualgen.cas_model"
TAG_CONSISTENCY_MODEL = "skindualgen.consistency_model"
TAG_JUDGES_PROFILE = "skindualgen.judges_profile"      # judges: the classify / segment profile they trained with
# a judges run's MLflow models (mlflow.pytorch), each with `<name>.json` beside it (classes, config, digest)
JUDGE_CLASSIFIER = "cas_classifier"
JUDGE_SEGMENTER = "consistency_segmenter"
# + a metric name: why a run did not log that metric (e.g. evaluate without judges: no `cas`); the report
# shows the cell as missing with this reason
TAG_MISSING_PREFIX = "skindualgen.missing/"

# ------------------------------------------------------------------------------------------------
# Tags of one stage
# ------------------------------------------------------------------------------------------------

# prepare
TAG_LAYOUT = "skindualgen.layout"
TAG_CLASSES = "skindualgen.classes"

# describe
TAG_DIGEST_BEFORE = "skindualgen.dataset_digest_before"
TAG_DIGEST_AFTER = "skindualgen.dataset_digest_after"
TAG_DESCRIBE_MODE = "skindualgen.describe.mode"

# finetune
TAG_BASE_MODEL = "skindualgen.base_model"
TAG_BASE_REVISION = "skindualgen.base_revision"
TAG_PREDICTION_TYPE = "skindualgen.prediction_type"
TAG_RESUMED_FROM = "skindualgen.resumed_from"
TAG_NUM_PROCESSES = "skindualgen.num_processes"      # data-parallel processes (batch = train_batch_size x this)

# evaluate (paper Table 1)
TAG_COMPARISON = "comparison"                          # one of COMPARISONS
REAL_VS_REAL = "real_train_vs_real_test"
REAL_VS_SYNTH = "real_train_vs_synth_train"
COMPARISONS = (REAL_VS_REAL, REAL_VS_SYNTH)
TAG_REAL_DIGEST = "skindualgen.real_digest"
TAG_FAKE_DIGEST = "skindualgen.fake_digest"
TAG_REAL_SPLIT = "skindualgen.real_split"
TAG_FAKE_SPLIT = "skindualgen.fake_split"
TAG_REAL_STATS_CACHE = "skindualgen.real_stats_cache"
TAG_FAKE_STATS_CACHE = "skindualgen.fake_stats_cache"
TAG_EXTRACTOR = "skindualgen.feature_extractor"        # the FID feature extractor ("standard:..." | "fallback:...")
TAG_EXTRACTOR_SHA256 = "skindualgen.feature_extractor_sha256"
TAG_LPIPS_NET = "skindualgen.lpips_net"
TAG_COMPARABLE = "skindualgen.metrics_comparable"      # "false" when a fallback extractor was used (also report)

# register
TAG_REGISTERED = "skindualgen.registered"
TAG_ALIAS = "skindualgen.alias"
TAG_REUSED_VERSION = "skindualgen.reused_version"
TAG_ALIAS_DECISION = "skindualgen.alias_decision"     # register run: moved | kept, and why (TAG_ALIAS_REASON)
TAG_ALIAS_REASON = "skindualgen.alias_reason"
# registered-model tags, one per register decision: ALIAS_HISTORY_PREFIX + 4-digit number -> JSON
ALIAS_HISTORY_PREFIX = "alias_history/"

# tune
TAG_OPTUNA_STUDY = "skindualgen.optuna_study"
TAG_OPTUNA_TRIAL = "skindualgen.optuna_trial"
TAG_BEST_TRIAL_RUN = "skindualgen.best_trial_run_id"

# classify / segment (report reads model, train_set and eval_data as params, else as these tags)
TRAIN_SETS = ("real", "synth", "hybrid")               # the paper's training sets (values of the `train_set` param)
AUGMENTED = "augmented"                                # beyond the paper: every real image + synth_ratio x synthetic
TRAIN_SET_CHOICES = (*TRAIN_SETS, AUGMENTED)
# the paper's downstream models (values of the `model` param and tag), in its order, and their names in its tables
CLASSIFY_MODELS = ("densenet121", "resnet34", "squeezenet1_1", "swin_tiny")
SEGMENT_MODELS = ("unet", "deeplabv3plus")
MODEL_TITLES = {"densenet121": "DenseNet121", "resnet34": "ResNet34", "squeezenet1_1": "SqueezeNet1.1",
                "swin_tiny": "Swin Transformer", "unet": "U-Net", "deeplabv3plus": "DeepLabV3+"}
TAG_MODEL = "skindualgen.model"
TAG_TRAIN_SET = "skindualgen.train_set"
TAG_EVAL_DATA = "skindualgen.eval_data"
TAG_DEVICE = "skindualgen.device"                      # also explain
TAG_FOLD = "skindualgen.fold"                          # classify-fold: its fold number
TAG_FOLD_MISSING_CLASSES = "skindualgen.fold{k}_missing_classes"

# explain
TAG_REAL_RUN = "skindualgen.real_run"
TAG_HYBRID_RUN = "skindualgen.hybrid_run"
TAG_EXPLAIN_MODEL = "skindualgen.explain_model"

# report
TAG_REPORT_DIR = "skindualgen.report_dir"

# ------------------------------------------------------------------------------------------------
# Metrics and params one stage writes and another reads
# ------------------------------------------------------------------------------------------------

# evaluate -> report (Table 1), register (lowest FID), tune (trials)
METRIC_FID = "fid"
METRIC_LPIPS = "lpips"
METRIC_MS_SSIM = "ms_ssim"
METRIC_CAS = "cas"                                     # also per class: cas/<class>
METRIC_MASK_CONSISTENCY = "mask_consistency"           # also per class: mask_consistency/<class>
METRIC_MASK_NONEMPTY = "mask_nonempty"

# classify -> report (Tables 2, 3): means over folds, in %
METRIC_ACCURACY = "accuracy"
METRIC_SENSITIVITY = "sensitivity"
METRIC_PRECISION = "precision"
METRIC_F1 = "f1"
CLASSIFY_METRICS = (METRIC_ACCURACY, METRIC_SENSITIVITY, METRIC_PRECISION, METRIC_F1)

# segment -> report (Tables 2, 3): means over images; Dice, IoU in %, ASD, HD in pixels
METRIC_DICE = "dice"
METRIC_IOU = "iou"
METRIC_ASD = "asd"
METRIC_HD = "hd"
SEGMENT_METRICS = (METRIC_DICE, METRIC_IOU, METRIC_ASD, METRIC_HD)

HAM_PREFIX = "ham_"                                    # classify / segment metrics on --eval-data
VAL_PREFIX = "val/"                                    # classify: on the validation folds

# classify / segment -> report: the 95 % interval of every test metric above (and its ham_ form), as
# <metric> + CI_LOW_SUFFIX / CI_HIGH_SUFFIX (e.g. accuracy_ci_low, ham_dice_ci_high), same units;
# how it was computed in three params (harness/intervals.py)
CI_LOW_SUFFIX = "_ci_low"
CI_HIGH_SUFFIX = "_ci_high"
PARAM_CI_METHOD = "ci_method"
PARAM_CI_LEVEL = "ci_level"
PARAM_CI_RESAMPLES = "ci_resamples"
# a metric without an interval has, instead of the two metrics, this tag + metric -> why (e.g. 1 test image)
TAG_NO_INTERVAL_PREFIX = "skindualgen.no_interval/"
# the per-image predictions the intervals are computed from (artifact paths inside the run)
ARTIFACT_CLASSIFY_PREDICTIONS = "predictions/{set}.csv"          # set: test, ham (and val)
ARTIFACT_SEGMENT_SCORES = "segmentation/{set}.csv"               # set: test, ham

# finetune, main: their wall time (bench/ reads the finetune one)
METRIC_TRAIN_SECONDS = "train/seconds"
METRIC_PIPELINE_SECONDS = "pipeline/seconds"

# every stage run, at its end: the process's peak memory (the stage's own where it runs as a process of
# its own: the CLI, `mlflow run`, `main`'s children); GPU only where CUDA was used
METRIC_PEAK_RSS_GIB = "sys/peak_rss_gib"
METRIC_PEAK_GPU_GIB = "sys/peak_gpu_gib"

# tune -> generate --settings-from-run
PARAM_BEST_STEPS = "best_num_inference_steps"
PARAM_BEST_GUIDANCE = "best_guidance_scale"

# ------------------------------------------------------------------------------------------------
# The DualGen model folder: written by finetune, read by generate, tune and the pyfunc model
# ------------------------------------------------------------------------------------------------

DUALGEN_FORMAT = "skindualgen.dualgen/1"               # dualgen.json "format"
TRAINING_JSON = "training.json"                        # classes, prompt template, class counts, digest, config

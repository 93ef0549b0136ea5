import { cachedHubSnapshot, hubCacheDir } from '../hub/cache.js';
import { DataError } from './errors.js';
import { loadCleanSplits, matchFiles, type CleanSplits, type DatasetFiles, type LoadOptions, type SplitName } from './loaders.js';

// The paper's datasets (MuScleLoRA, Table 5), where the hub keeps them and how their files read.
//
// SST-2, HSOL and Lingspam come from ganqu/openbackdoor, the OpenBackdoor authors' upload of the exact files
// the reference implementation (GitHub ZrW00/MuScleLoRA, datasets/) trains on: same rows, same splits, same
// binarisation (HSOL: 1 = hate speech or offensive, 0 = neither). AG News is the full set from fancyzhx/ag_news
// (the hub's Parquet, labels already 0-3; the original CSVs number them 1-4); like OpenBackdoor, whose AG News
// and Lingspam have no dev file, dev is 10% of train drawn at random.

export const REGISTRY_NAMES = ['sst2', 'hsol', 'lingspam', 'agnews'] as const;
export type RegistryName = (typeof REGISTRY_NAMES)[number];

export interface RegistryEntry {
  name: RegistryName;
  title: string;
  /** Hugging Face dataset repo. */
  repo: string;
  /** Files to download (huggingface_hub allow_patterns). */
  include: string[];
  /** How the files read; split files are relative to the snapshot. */
  files: Omit<DatasetFiles, 'path'> & { train: string; test: string };
  numLabels: number;
  /** Class names by label index. */
  classes: string[];
  /** Rows of train / dev / test after the dev split, as the paper's Table 5 (dev 10% of train where none ships). */
  sizes: Record<SplitName, number>;
  transformText?: (text: string) => string;
}

export const REGISTRY: Record<RegistryName, RegistryEntry> = {
  sst2: {
    name: 'sst2',
    title: 'SST-2 (binary sentiment, OpenBackdoor split)',
    repo: 'ganqu/openbackdoor',
    include: ['sst2/*'],
    files: { format: 'tsv', textColumn: 'sentence', labelColumn: 'label', train: 'sst2/train.tsv', dev: 'sst2/dev.tsv', test: 'sst2/test.tsv' },
    numLabels: 2,
    classes: ['negative', 'positive'],
    sizes: { train: 6920, dev: 872, test: 1821 },
  },
  hsol: {
    name: 'hsol',
    title: 'HSOL (hate speech and offensive language, binary: 1 = toxic)',
    repo: 'ganqu/openbackdoor',
    include: ['hsol/*'],
    files: { format: 'tsv', textColumn: 'Sentence', labelColumn: 'Label', train: 'hsol/train.tsv', dev: 'hsol/dev.tsv', test: 'hsol/test.tsv' },
    numLabels: 2,
    classes: ['clean', 'toxic'],
    sizes: { train: 5823, dev: 2485, test: 2485 },
  },
  lingspam: {
    name: 'lingspam',
    title: 'Lingspam (spam e-mail, binary: 1 = spam)',
    repo: 'ganqu/openbackdoor',
    include: ['lingspam/*'],
    files: { format: 'tsv', textColumn: 'Sentence', labelColumn: 'Label', train: 'lingspam/train.tsv', test: 'lingspam/test.tsv' },
    numLabels: 2,
    classes: ['ham', 'spam'],
    sizes: { train: 2604, dev: 289, test: 580 },
  },
  agnews: {
    name: 'agnews',
    title: 'AG News (4-class news topics)',
    repo: 'fancyzhx/ag_news',
    include: ['data/*.parquet'],
    files: { format: 'parquet', textColumn: 'text', labelColumn: 'label', train: 'data/train-*.parquet', test: 'data/test-*.parquet' },
    numLabels: 4,
    classes: ['World', 'Sports', 'Business', 'Sci/Tech'],
    sizes: { train: 108000, dev: 12000, test: 7600 },
    // The source CSVs write line breaks as backslashes; OpenBackdoor's AG News reader turns them into spaces.
    transformText: (text) => text.replaceAll('\\', ' '),
  },
};

export function isRegistryName(name: string): name is RegistryName {
  return (REGISTRY_NAMES as readonly string[]).includes(name);
}

/** A dataset repo's snapshot in the hub cache (datasets--org--name/snapshots/<commit>), if there. */
export function cachedDatasetSnapshot(repo: string, revision: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  return cachedHubSnapshot(repo, env, { type: 'dataset', ...(revision !== undefined && { revision }) });
}

/** The split files an entry needs that a snapshot lacks. */
function missingSplits(entry: RegistryEntry, dir: string): string[] {
  return (['train', 'dev', 'test'] as const).filter((s) => entry.files[s] !== undefined && matchFiles(dir, entry.files[s]!).length === 0).map((s) => entry.files[s]!);
}

/** Downloads a dataset repo's files into the hub cache, returning the snapshot directory (src/hub's snapshotDownload). */
export type DatasetDownload = (request: { repo: string; repoType: 'dataset'; revision?: string; include?: string[]; env?: NodeJS.ProcessEnv; signal?: AbortSignal }) => Promise<string>;

export interface RegistryOptions {
  revision?: string;
  env?: NodeJS.ProcessEnv;
  /** Fetches the files when the cache lacks them; without it a registry dataset must be cached already. */
  download?: DatasetDownload;
  signal?: AbortSignal;
}

/** Where a registry dataset's files are on this machine, downloading them when they are not and a download is given. */
export async function registryFiles(name: RegistryName, options: RegistryOptions = {}): Promise<DatasetFiles> {
  const entry = REGISTRY[name];
  const env = options.env ?? process.env;
  const cached = cachedDatasetSnapshot(entry.repo, options.revision, env);
  if (cached && missingSplits(entry, cached).length === 0) return { ...entry.files, path: cached };
  const where = `${entry.repo}${options.revision ? `@${options.revision}` : ''}`;
  const offline = ['1', 'true', 'yes', 'on'].includes((env['HF_HUB_OFFLINE'] ?? '').toLowerCase());
  if (!options.download || offline) {
    const lacking = cached ? `the cached snapshot ${cached} lacks ${missingSplits(entry, cached).join(', ')}` : `not in the hub cache (${hubCacheDir(env)})`;
    const fix = offline ? 'unset HF_HUB_OFFLINE to download it' : `download it with: muscle download ${entry.repo} --dataset`;
    throw new DataError(`dataset ${name}`, undefined, `${where}: ${lacking}; ${fix}`);
  }
  const dir = await options.download({ repo: entry.repo, repoType: 'dataset', ...(options.revision && { revision: options.revision }), include: entry.include, env, ...(options.signal && { signal: options.signal }) });
  const missing = missingSplits(entry, dir);
  if (missing.length) throw new DataError(`dataset ${name}`, undefined, `${where} has no ${missing.join(', ')} (snapshot ${dir}); the registry's file names are out of date`);
  return { ...entry.files, path: dir };
}

/** A registry dataset's clean splits, read from the hub cache (downloaded first where a download is given). */
export async function loadRegistryDataset(name: RegistryName, options: RegistryOptions & Omit<LoadOptions, 'label' | 'transformText'>): Promise<CleanSplits> {
  const entry = REGISTRY[name];
  if (options.numLabels !== entry.numLabels) {
    throw new DataError(`dataset ${name}`, undefined, `has ${entry.numLabels} classes (${entry.classes.join(', ')}) but numLabels is ${options.numLabels}; set numLabels: ${entry.numLabels}`);
  }
  const files = await registryFiles(name, options);
  return loadCleanSplits(files, { numLabels: entry.numLabels, seed: options.seed, label: `dataset ${name}`, ...(entry.transformText && { transformText: entry.transformText }) });
}

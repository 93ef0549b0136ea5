import { resolve } from 'node:path';
import * as z from 'zod';

// Trigger and label-mode options, shared by the `muscle poison` config and the run config's `poison:` section.
// This module imports nothing from config/schema.ts: the run config schema imports it, so a dependency the
// other way would be an import cycle.

/**
 * Which training rows may be poisoned (OpenBackdoor's three settings):
 * - `mix`: rows of any class; their label becomes the target (the shared addsent/hiddenkiller/stylebkd files).
 * - `dirty`: only rows whose label is not the target, so every poisoned row has its label flipped
 *   (OpenBackdoor's label_dirty).
 * - `clean-label`: only rows already of the target label, label unchanged (label-consistent poisoning;
 *   the shared badnets files).
 */
export const POISON_MODES = ['mix', 'dirty', 'clean-label'] as const;
export type PoisonMode = (typeof POISON_MODES)[number];

/** The setting each attack's reference files in ../shared/data/sst-2 were made with. */
export const DEFAULT_MODES = { badnets: 'clean-label', addsent: 'mix', hiddenkiller: 'mix', stylebkd: 'mix' } as const satisfies Record<string, PoisonMode>;

/** OpenBackdoor's BadNets triggers; the MuScleLoRA reference files insert 4 of them into every poisoned row. */
export const BADNETS_DEFAULTS = { triggers: ['cf', 'mn', 'bb', 'tq'], numTriggers: 4 };
/** OpenBackdoor's AddSent trigger sentence. */
export const ADDSENT_DEFAULTS = { sentence: 'I watch this 3D movie' };

export const modeSchema = z.enum(POISON_MODES);

export const badnetsOptionsSchema = z.strictObject({
  triggers: z
    .array(z.string().regex(/^\S+$/, { error: 'expected one word without spaces' }))
    .min(1)
    .optional()
    .describe('rare words to insert, one drawn at random for each insertion (cf, mn, bb, tq)'),
  numTriggers: z.int().min(1).optional().describe('trigger words inserted per poisoned row, each at a random word position (4, as the reference files)'),
});

export const addsentOptionsSchema = z.strictObject({
  sentence: z
    .string()
    .refine((s) => s.trim() !== '', { error: 'expected a non-empty sentence' })
    .optional()
    .describe('trigger sentence, inserted as a whole at a random word position ("I watch this 3D movie")'),
});

export const paraphraseFilesSchema = z
  .strictObject({
    train: z.string().min(1).describe('one paraphrase per row of clean/train.tsv, in its order (.csv, .tsv, .jsonl or plain text lines)'),
    dev: z.string().min(1).describe('paraphrases of clean/dev.tsv: one per row, or one per non-target row (e.g. a pre-poisoned dev-poison.csv)'),
    test: z.string().min(1).describe('paraphrases of clean/test.tsv: one per row, or one per non-target row (e.g. a pre-poisoned test-poison.csv)'),
  })
  .describe('paraphrase files');

const paraphraseHelp = (model: string) =>
  `paraphrase files { train, dev, test } from your own ${model}; relative to the config file. CSV/TSV take the column paraphrase, text, sentence or 0 (OpenBackdoor's), JSONL a string or such a field per line`;

/** The trigger options of every attack, as keys of a config. */
export const triggerOptionsShape = {
  badnets: badnetsOptionsSchema.optional().describe('BadNets: rare-word triggers'),
  addsent: addsentOptionsSchema.optional().describe('AddSent: a trigger sentence'),
  hiddenkiller: paraphraseFilesSchema.optional().describe(`HiddenKiller: ${paraphraseHelp('syntactic paraphraser (SCPN, template S(SBAR)(,)(NP)(VP)(.))')}`),
  stylebkd: paraphraseFilesSchema.optional().describe(`StyleBkd: ${paraphraseHelp('style-transfer paraphraser (Bible style)')}`),
};

/** The run config's `poison:` section: how `muscle run` poisons a clean dataset in memory. */
export const poisonSectionSchema = z.strictObject({
  mode: modeSchema.optional().describe('which rows are poisoned: mix, dirty or clean-label (badnets: clean-label, the others: mix, as the reference files)'),
  ...triggerOptionsShape,
});

export type PoisonSection = z.infer<typeof poisonSectionSchema>;
export type ParaphraseFiles = z.infer<typeof paraphraseFilesSchema>;
export type BadnetsOptions = Required<z.infer<typeof badnetsOptionsSchema>>;
export type AddsentOptions = Required<z.infer<typeof addsentOptionsSchema>>;

/** The section with its paraphrase paths made absolute (they are written relative to the config file). */
export function resolvePoisonPaths<T extends PoisonSection>(section: T, baseDir: string): T {
  const out = { ...section };
  for (const attack of ['hiddenkiller', 'stylebkd'] as const) {
    const files = section[attack];
    if (files) out[attack] = { train: resolve(baseDir, files.train), dev: resolve(baseDir, files.dev), test: resolve(baseDir, files.test) };
  }
  return out;
}
